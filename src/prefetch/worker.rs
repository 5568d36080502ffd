//! The background prefetcher: one process per WAL directory.
//!
//! One per WAL directory (an flock on the area's `.lock`; a second one exits at once). It
//! keeps the next `--prefetch` segments after the one PostgreSQL last asked for (the
//! `.next` hint `wal-fetch` leaves) downloaded, decoded, verified and fsynced in the
//! prefetch area, a few at a time over one storage client, bounded by count and bytes. It
//! follows the timeline PostgreSQL asks for, drops segments recovery has passed, and
//! exits, cleaning up, after an idle period with no request. A segment that fails is not
//! asked for again at once: after "not found" (the end of the archive) for
//! [`MISSING_BACKOFF`], after any other failure (denied, unavailable, corrupt) for an
//! exponential backoff capped at [`FAILURE_BACKOFF_CAP`]; the failure is recorded in the
//! area, where the next `wal-fetch` of that segment reports it to PostgreSQL's log. `wal-fetch` starts it; WAL-E's
//! `wal-prefetch BASE SEGMENT` command line starts it too.

use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{PrefetchDir, check_segment_file, publish};
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::Layout;
use crate::lzop;
use crate::storage::{Storage, Store};
use crate::wal::{self, SegmentName};

/// How often the hint is read.
const POLL: Duration = Duration::from_millis(20);
/// After "not found", the same name is not asked for again before this.
const MISSING_BACKOFF: Duration = Duration::from_secs(2);
/// The first pause after another failure of a segment; doubles per failure.
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest pause between two attempts at a failing segment.
const FAILURE_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Downloads at once.
const CONCURRENCY: usize = 4;

/// Serves the prefetch area of the WAL directory `base` from `first` on, unless a
/// prefetcher already does; returns after an idle period, having cleaned up.
pub async fn run(
    config: &Config,
    decoding: &Decoding,
    base: &Path,
    first: SegmentName,
    window: u32,
) -> Result<(), Error> {
    let area = PrefetchDir::for_base(base, config.prefetch.dir.as_deref());
    area.create()
        .map_err(|e| Error::local(area.root(), "cannot create the prefetch directory", e))?;
    if area.next().is_none() {
        area.set_next(&first, wal::DEFAULT_SEGMENT_SIZE)
            .map_err(|e| Error::local(area.root(), "cannot write", e))?;
    }
    let Some(_lock) = area
        .try_lock()
        .map_err(|e| Error::local(area.root(), "cannot lock", e))?
    else {
        tracing::debug!("a prefetcher already serves {}", area.root().display());
        return Ok(());
    };
    // Holding the lock, nobody else writes in running/: whatever is there was left by a
    // prefetcher that died (kill -9) and would block those segments.
    area.clear_running();
    let result = serve(config, decoding, &area, window.max(1), config.prefetch.idle).await;
    area.remove_all();
    result
}

/// The prefetch loop; returns when idle for `idle`.
async fn serve(
    config: &Config,
    decoding: &Decoding,
    area: &PrefetchDir,
    window: u32,
    idle: Duration,
) -> Result<(), Error> {
    let mut downloads = Downloads {
        store: Arc::new(Store::open(&config.store).await?),
        layout: Layout::new(config.store.path_prefix()),
        decoding: decoding.clone(),
        area: area.clone(),
        tasks: JoinSet::new(),
        in_flight: HashSet::new(),
        resting: HashMap::new(),
        backoff_policy: crate::config::RetryPolicy {
            base_delay: FAILURE_BACKOFF_BASE,
            max_delay: FAILURE_BACKOFF_CAP,
            ..crate::config::RetryPolicy::default()
        },
    };
    let mut last_hint = area.next();
    let mut last_change = Instant::now();
    loop {
        downloads.collect_finished()?;
        let hint = area.next();
        if hint != last_hint {
            last_hint = hint;
            last_change = Instant::now();
        } else if downloads.in_flight.is_empty() && last_change.elapsed() > idle {
            tracing::debug!("prefetcher idle for {idle:?}; exiting");
            return Ok(());
        }
        if let Some((next, size)) = hint {
            // Bounded by count and by bytes: at least one segment, whatever its size.
            let by_bytes = (config.prefetch.max_bytes / size).max(1);
            let wanted = window_from(
                &next,
                size,
                window.min(by_bytes.min(u32::MAX as u64) as u32),
            );
            drop_unwanted(area, &wanted);
            downloads.start(&wanted, size);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The worker's downloads: those under way, and the segments resting after a failure
/// or a "not found".
struct Downloads {
    store: Arc<Store>,
    layout: Layout,
    decoding: Decoding,
    area: PrefetchDir,
    tasks: JoinSet<(SegmentName, Result<(), Error>)>,
    in_flight: HashSet<SegmentName>,
    /// Segments not to ask for before the instant given, and how often each failed.
    resting: HashMap<SegmentName, (Instant, u32)>,
    backoff_policy: crate::config::RetryPolicy,
}

impl Downloads {
    /// Takes in the finished downloads: a delivered segment forgets its failures, a
    /// missing one rests, a failed one rests longer each time and records why.
    fn collect_finished(&mut self) -> Result<(), Error> {
        while let Some(done) = self.tasks.try_join_next() {
            let (segment, result) = done?;
            self.in_flight.remove(&segment);
            match result {
                Ok(()) => {
                    self.resting.remove(&segment);
                    self.area.clear_failure(&segment);
                }
                Err(err) if err.is_not_found() => {
                    self.resting
                        .insert(segment, (Instant::now() + MISSING_BACKOFF, 0));
                }
                Err(err) => {
                    let failures = self.resting.get(&segment).map_or(0, |&(_, n)| n) + 1;
                    let pause = crate::retry::backoff(&self.backoff_policy, failures);
                    tracing::warn!(
                        "prefetch of {segment} failed (attempt {failures}; next in {pause:.1?}): {err}"
                    );
                    self.area
                        .record_failure(&segment, &err.to_string().replace('\n', " "));
                    self.resting
                        .insert(segment, (Instant::now() + pause, failures));
                }
            }
        }
        Ok(())
    }

    /// Starts downloads of the `wanted` segments in order, up to [`CONCURRENCY`], none
    /// past a resting one.
    fn start(&mut self, wanted: &[SegmentName], size: u64) {
        let now = Instant::now();
        self.resting.retain(|segment, (until, failures)| {
            // A segment that kept failing stays known (its count sets the next pause)
            // while it is still wanted.
            *until > now || (*failures > 0 && wanted.contains(segment))
        });
        for &segment in wanted {
            if self.tasks.len() >= CONCURRENCY {
                break;
            }
            if self
                .resting
                .get(&segment)
                .is_some_and(|&(until, _)| until > now)
            {
                // Not before its pause is over, and nothing after it either: at the
                // end of the archive there is nothing after it, and a failing store
                // is not asked for more.
                break;
            }
            if self.in_flight.contains(&segment) || self.area.ready(&segment).exists() {
                continue;
            }
            self.in_flight.insert(segment);
            let (store, layout, area, decoding) = (
                self.store.clone(),
                self.layout.clone(),
                self.area.clone(),
                self.decoding.clone(),
            );
            self.tasks.spawn(async move {
                let result = download(&store, &layout, &area, &segment, size, &decoding).await;
                (segment, result)
            });
        }
    }
}

/// The `window` segments from `next` on, on `next`'s timeline.
fn window_from(next: &SegmentName, size: u64, window: u32) -> Vec<SegmentName> {
    let mut out = Vec::with_capacity(window as usize);
    let mut segment = *next;
    for _ in 0..window {
        out.push(segment);
        segment = segment.next(size);
    }
    out
}

/// Removes ready segments outside the window: passed by recovery, or of another timeline.
fn drop_unwanted(area: &PrefetchDir, wanted: &[SegmentName]) {
    let Ok(entries) = std::fs::read_dir(area.root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(segment) = SegmentName::parse(&name.to_string_lossy())
            && !wanted.contains(&segment)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Downloads one segment into the area: decoded into `running/`, checked, fsynced,
/// renamed. A failure leaves nothing behind.
async fn download(
    store: &Store,
    layout: &Layout,
    area: &PrefetchDir,
    segment: &SegmentName,
    size: u64,
    decoding: &Decoding,
) -> Result<(), Error> {
    let object = store.get(&layout.wal_key(&segment.to_string())).await?;
    let (area, segment, decoding) = (area.clone(), *segment, decoding.clone());
    tokio::task::spawn_blocking(move || {
        let url = object.url.clone();
        let partial = area.partial(&segment);
        let mut file = crate::durable::create_new_nofollow(&partial)
            .map_err(|e| Error::local(&partial, "cannot create", e))?;
        let body = BufReader::with_capacity(256 * 1024, object.into_blocking_read());
        let decoded = decoding
            .decoder(body, &url)
            .map_err(|e| lzop::DecodeToError::Decode(lzop::Error::Read(e)))
            .and_then(|mut decoder| {
                decoder.decode_to(&mut crate::durable::EarlyWriteback::new(&mut file))
            });
        let checked = decoded
            .map_err(|e| match e {
                lzop::DecodeToError::Decode(bad) => Error::from_decode(&url, bad),
                lzop::DecodeToError::Write(io) => Error::local(&partial, "cannot write", io),
            })
            .and_then(|_| {
                check_segment_file(&partial, &segment).map_err(|e| Error::corrupt(url.clone(), e))
            })
            .and_then(|got| {
                if got == size {
                    Ok(())
                } else {
                    Err(Error::corrupt(
                        url.clone(),
                        format!("{got} bytes, but segments here are {size}"),
                    ))
                }
            })
            .and_then(|()| {
                publish(&partial, file, &area.ready(&segment))
                    .map_err(|e| Error::local(&partial, "cannot publish", e))
            });
        if checked.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        checked
    })
    .await?
}

/// Starts a detached prefetcher for `area` unless one runs ([`crate::detached::spawn`]).
pub fn ensure_running(
    area: &PrefetchDir,
    base: &Path,
    next: &SegmentName,
    window: u32,
    relaunch: &[std::ffi::OsString],
) {
    if area.prefetcher_running() {
        return;
    }
    let args = [
        "wal-prefetch".into(),
        "--prefetch".into(),
        window.to_string().into(),
        base.as_os_str().to_owned(),
        next.to_string().into(),
    ];
    crate::detached::spawn(relaunch, &args, "the prefetcher");
}

/// Waits for a download of `segment` that the prefetcher has under way, as long as it
/// keeps growing; true if the segment became ready.
pub async fn wait_for(area: &PrefetchDir, segment: &SegmentName) -> bool {
    let mut last_size = None;
    let mut last_growth = Instant::now();
    loop {
        if area.ready(segment).exists() {
            return true;
        }
        match area.partial_size(segment) {
            Some(size) if Some(size) != last_size => {
                last_size = Some(size);
                last_growth = Instant::now();
            }
            Some(_) if last_growth.elapsed() < Duration::from_secs(2) => {}
            _ => return area.ready(segment).exists(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
