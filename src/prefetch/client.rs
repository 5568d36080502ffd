//! The `wal-fetch` side of prefetching: take a ready segment (or wait for one being
//! downloaded), report what the prefetcher could not fetch, and tell it what comes next,
//! starting it when none runs.

use std::path::{Path, PathBuf};

use super::{PrefetchDir, worker};
use crate::config::Config;
use crate::wal::{self, SegmentName};

/// The prefetch side of one `wal-fetch` of a segment.
pub struct Prefetching {
    area: PrefetchDir,
    /// The resolved directory of the destination (what `wal-prefetch` is given).
    base: PathBuf,
    segment: SegmentName,
    /// A move out of the area failed (said once): no second attempt in this call.
    move_failed: std::cell::Cell<bool>,
}

impl Prefetching {
    /// The prefetch area of the WAL directory `base` (resolved, [`wal_directory_of`]);
    /// nothing is touched yet, and any problem with it later only disables prefetching for
    /// this call.
    pub fn new(config: &Config, base: PathBuf, segment: SegmentName) -> Prefetching {
        let area = PrefetchDir::for_base(&base, config.prefetch.dir.as_deref());
        Prefetching {
            area,
            base,
            segment,
            move_failed: std::cell::Cell::new(false),
        }
    }

    /// Hands over the prefetched segment if it is ready, and then tells the prefetcher
    /// what comes next. Returns its size when it came from the area. Synchronous: the hit
    /// path of a `wal-fetch` runs before its async runtime exists.
    pub fn take_ready(
        &self,
        destination: &Path,
        relaunch: &[std::ffi::OsString],
        window: u32,
    ) -> Option<u64> {
        let taken = self.take_now(destination);
        if let Some(size) = taken {
            self.announce(self.segment.next(size), size, relaunch, window);
        }
        taken
    }

    /// After [`Prefetching::take_ready`] found nothing: waits for the download a live
    /// prefetcher has under way, rather than starting a second, and hands the segment over
    /// as `take_ready` does. On `None` the caller fetches in-band and then calls
    /// [`Prefetching::after_in_band`], so that a prefetcher started now does not compete
    /// with that fetch for the CPU.
    pub async fn take_after_miss(
        &self,
        destination: &Path,
        relaunch: &[std::ffi::OsString],
        window: u32,
    ) -> Option<u64> {
        // The download may have ended since `take_ready` looked (the runtime was built
        // in between): take it rather than download it again.
        let mut taken = self.take_now(destination);
        // Wait only for a download a live prefetcher has under way (one killed mid-way
        // leaves a partial file that will never grow).
        if taken.is_none()
            && self.area.partial_size(&self.segment).is_some()
            && self.area.prefetcher_running()
        {
            let size = self
                .area
                .next()
                .map_or(wal::DEFAULT_SEGMENT_SIZE, |(_, s)| s);
            self.announce(self.segment, size, relaunch, window);
            tracing::debug!("waiting for the prefetcher's download of {}", self.segment);
            if worker::wait_for(&self.area, &self.segment).await {
                taken = self.take_now(destination);
            }
        }
        if taken.is_none()
            && let Some(reason) = self.area.take_failure(&self.segment)
        {
            tracing::warn!(
                "the prefetcher could not fetch {}: {reason}; fetching it directly",
                self.segment
            );
        }
        if let Some(size) = taken {
            self.announce(self.segment.next(size), size, relaunch, window);
        }
        taken
    }

    /// Moves the segment from the area to `destination` if it is there; a failure only
    /// turns prefetching off for this call.
    fn take_now(&self, destination: &Path) -> Option<u64> {
        if self.move_failed.get() {
            return None;
        }
        match self.area.take(&self.segment, destination) {
            Ok(taken) => taken,
            Err(err) => {
                self.move_failed.set(true);
                // E.g. WALE_PREFETCH_DIR on another file system: the rename cannot work.
                tracing::warn!(
                    "cannot move the prefetched segment from {} to {}: {err} (the prefetch directory must be on the file system of the WAL directory); fetching directly",
                    self.area.root().display(),
                    destination.display()
                );
                None
            }
        }
    }

    fn announce(&self, next: SegmentName, size: u64, relaunch: &[std::ffi::OsString], window: u32) {
        // On the hit path the area exists; it is created only when writing fails.
        let written = self.area.set_next(&next, size).or_else(|_| {
            self.area.create()?;
            self.area.set_next(&next, size)
        });
        if let Err(err) = written {
            tracing::warn!(
                "prefetching off: cannot write to {}: {err}",
                self.area.root().display()
            );
            return;
        }
        worker::ensure_running(&self.area, &self.base, &next, window, relaunch);
    }

    /// After an in-band fetch of `size` bytes: the prefetcher, started if none runs, goes
    /// on from the next segment, with the segment size this one had.
    pub fn after_in_band(&self, size: u64, relaunch: &[std::ffi::OsString], window: u32) {
        let size = if wal::is_valid_segment_size(size) {
            size
        } else {
            wal::DEFAULT_SEGMENT_SIZE
        };
        self.announce(self.segment.next(size), size, relaunch, window);
    }
}

/// The directory holding the destination, resolved (what `wal-prefetch` is given).
pub fn wal_directory_of(destination: &Path) -> PathBuf {
    let parent = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
}
