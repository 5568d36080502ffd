//! The progress display of long commands (`backup-fetch`, `restore`): an indicatif bar
//! with bytes, rate and ETA on a terminal; nothing otherwise, where the per-partition log
//! lines already say how it goes. Log lines written while a bar is shown go through
//! [`suspend`], so they never tear it.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar on screen, if any: the log writer needs to find it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A progress bar for `total` bytes (when known), drawn on stderr only if it is a
/// terminal, removed when dropped.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// Starts a bar; `total` is the expected number of bytes, if known.
    pub fn start(total: Option<u64>) -> Bar {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(5));
        let template = if total.is_some() {
            "wale: {msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "wale: {msg} {bytes} {binary_bytes_per_sec}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Bar { bar }
    }

    /// Bytes done so far.
    pub fn set_position(&self, bytes: u64) {
        self.bar.set_position(bytes);
    }

    /// The words before the bar, e.g. `2/3 partitions`.
    pub fn set_message(&self, message: String) {
        self.bar.set_message(message);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        SHOWN.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.bar.finish_and_clear();
    }
}

/// Runs `write` with the bar (if one is shown) taken off the screen, then redraws it.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match shown {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}
