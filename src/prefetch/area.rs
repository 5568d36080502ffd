//! The prefetch area on disk: ready segments, downloads under way, the hint, the lock
//! and the reasons of failures.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::wal::{self, SegmentName};

/// The prefetch area of one WAL directory.
#[derive(Debug, Clone)]
pub struct PrefetchDir {
    root: PathBuf,
}

impl PrefetchDir {
    /// The area of the WAL directory `base` (PostgreSQL's `pg_wal`, resolved):
    /// `base/.wal-e/prefetch` as WAL-E had it, or `override_dir` (`WALE_PREFETCH_DIR`,
    /// e.g. outside `pg_wal`, which `pg_rewind` prefers; on the same file system).
    pub fn for_base(base: &Path, override_dir: Option<&str>) -> PrefetchDir {
        match override_dir.filter(|d| !d.is_empty()) {
            Some(dir) => PrefetchDir {
                root: PathBuf::from(dir),
            },
            None => PrefetchDir {
                root: base.join(".wal-e").join("prefetch"),
            },
        }
    }

    /// Where the area is.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directories (mode 0700).
    pub fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.running())
    }

    /// A complete segment's path.
    pub fn ready(&self, segment: &SegmentName) -> PathBuf {
        self.root.join(segment.to_string())
    }

    /// The in-progress download directory.
    pub fn running(&self) -> PathBuf {
        self.root.join("running")
    }

    /// A segment's in-progress file.
    pub fn partial(&self, segment: &SegmentName) -> PathBuf {
        self.running().join(format!("{segment}.part"))
    }

    /// Why the prefetcher could not deliver a segment (its logs go nowhere): the next
    /// `wal-fetch` of that segment reports it, as pgBackRest's async `archive-get` does
    /// with its `.error` files.
    fn failure_path(&self, segment: &SegmentName) -> PathBuf {
        self.root.join(format!("{segment}.error"))
    }

    /// Records why `segment` failed (replacing an older reason).
    pub fn record_failure(&self, segment: &SegmentName, reason: &str) {
        let _ = crate::durable::replace_file(
            &self.failure_path(segment),
            format!("{reason}\n").as_bytes(),
        );
    }

    /// The prefetcher's last failure for `segment`, removed as it is read.
    pub fn take_failure(&self, segment: &SegmentName) -> Option<String> {
        let path = self.failure_path(segment);
        let reason = fs::read_to_string(&path).ok()?;
        let _ = fs::remove_file(&path);
        Some(reason.trim_end().to_string())
    }

    /// Forgets a failure once the segment was delivered.
    pub fn clear_failure(&self, segment: &SegmentName) {
        let _ = fs::remove_file(self.failure_path(segment));
    }

    fn next_path(&self) -> PathBuf {
        self.root.join(".next")
    }

    /// Moves a prefetched segment onto `destination` if it is there and sound; returns its
    /// size. An unsound file is removed and `None` returned (the caller fetches in-band).
    pub fn take(&self, segment: &SegmentName, destination: &Path) -> io::Result<Option<u64>> {
        let ready = self.ready(segment);
        let size = match check_segment_file(&ready, segment) {
            Ok(size) => size,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                tracing::warn!("discarding prefetched {}: {err}", ready.display());
                let _ = fs::remove_file(&ready);
                return Ok(None);
            }
        };
        // Its contents were fsynced when it was published; PostgreSQL reads it at once
        // and fetches again after a crash, so the rename needs no directory fsync.
        fs::rename(&ready, destination)?;
        Ok(Some(size))
    }

    /// Tells the prefetcher which segment comes next and how big segments are: one
    /// fixed-length line, `<segment> <size, 10 digits> <check of both, 8 hex digits>`,
    /// rewritten in place (on every prefetch hit: no new inode, see
    /// [`crate::durable::overwrite_in_place`]).
    pub fn set_next(&self, next: &SegmentName, segment_size: u64) -> io::Result<()> {
        let hint = format!("{next} {segment_size:010}");
        let text = format!("{hint} {:08x}\n", hint_check(&hint));
        crate::durable::overwrite_in_place(&self.next_path(), text.as_bytes())
    }

    /// What the last `set_next` said, if anything readable. A line whose check does not
    /// match (read while it was being rewritten) reads as nothing; a line without one
    /// was written whole by an older `wal-fetch`.
    pub fn next(&self) -> Option<(SegmentName, u64)> {
        let text = fs::read_to_string(self.next_path()).ok()?;
        let mut fields = text.split_whitespace();
        let (name, size) = (fields.next()?, fields.next()?);
        if let Some(check) = fields.next()
            && u32::from_str_radix(check, 16).ok()? != hint_check(&format!("{name} {size}"))
        {
            return None;
        }
        let size = size.parse().ok().filter(|&s| wal::is_valid_segment_size(s));
        Some((
            SegmentName::parse(name)?,
            size.unwrap_or(wal::DEFAULT_SEGMENT_SIZE),
        ))
    }

    /// Whether a prefetcher holds the lock.
    pub fn prefetcher_running(&self) -> bool {
        match self.try_lock() {
            Ok(Some(_lock)) => false,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Takes the prefetcher lock if nobody holds it; the lock lasts as long as the file.
    pub fn try_lock(&self) -> io::Result<Option<File>> {
        crate::durable::try_lock(&self.root.join(".lock"))
    }

    /// Size of the in-progress download of `segment`, if one is under way.
    pub fn partial_size(&self, segment: &SegmentName) -> Option<u64> {
        fs::metadata(self.partial(segment)).ok().map(|m| m.len())
    }

    /// Removes everything the prefetcher made, lock included (call while holding it).
    pub fn remove_all(&self) {
        self.clean();
        let _ = fs::remove_dir(self.running());
        let _ = fs::remove_file(self.root.join(".lock"));
        let _ = fs::remove_dir(&self.root);
        if let Some(parent) = self.root.parent().filter(|p| p.ends_with(".wal-e")) {
            let _ = fs::remove_dir(parent);
        }
    }

    /// Removes partial downloads (call while holding the lock).
    pub fn clear_running(&self) {
        let Ok(entries) = fs::read_dir(self.running()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".part") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Removes segments, partial downloads and the hint.
    fn clean(&self) {
        for dir in [self.running(), self.root.clone()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ours = name.ends_with(".part")
                    || SegmentName::parse(&name).is_some()
                    || name
                        .strip_suffix(".error")
                        .is_some_and(|s| SegmentName::parse(s).is_some())
                    || name == ".next";
                if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// The hint line's check: FNV-1a (32 bits). Not a CRC from a crate: those pick their
/// code by probing the CPU on first use (`cpuid`, which traps to the hypervisor in a
/// virtual machine: about 6 % of a prefetch hit's time on the benchmark machine).
fn hint_check(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Checks that a file is a whole WAL segment that belongs where its name says: a valid
/// segment size, and a first page header with WAL's magic, the long-header flag, the
/// name's timeline and the segment's own start address. Returns the size.
pub fn check_segment_file(path: &Path, segment: &SegmentName) -> io::Result<u64> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let size = file.metadata()?.len();
    if !wal::is_valid_segment_size(size) {
        return Err(io::Error::other(format!(
            "{size} bytes is not a WAL segment size"
        )));
    }
    let mut header = [0u8; 16];
    file.read_exact(&mut header)?;
    wal::check_page_header(&header, segment, size).map_err(io::Error::other)?;
    Ok(size)
}

/// Makes a finished download visible under its name (a visible partial file, unlike
/// [`crate::durable::StagedFile`], so that `wal-fetch` can watch a download grow).
pub fn publish(partial: &Path, file: File, ready: &Path) -> io::Result<()> {
    crate::durable::rename_into_place(file, partial, ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(tli: u32, log: u32, seg: u32) -> SegmentName {
        SegmentName::new(tli, log, seg)
    }

    #[test]
    fn failures_are_kept_until_read_or_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let area = PrefetchDir::for_base(dir.path(), None);
        area.create().unwrap();
        let s = seg(1, 0, 9);
        assert_eq!(area.take_failure(&s), None);
        area.record_failure(&s, "s3://b/k: access denied");
        assert_eq!(
            area.take_failure(&s).as_deref(),
            Some("s3://b/k: access denied")
        );
        assert_eq!(area.take_failure(&s), None);
        area.record_failure(&s, "x");
        area.clear_failure(&s);
        assert_eq!(area.take_failure(&s), None);
        area.record_failure(&s, "x");
        area.remove_all();
        assert!(!dir.path().join(".wal-e").exists());
    }

    #[test]
    fn the_next_hint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let area = PrefetchDir::for_base(dir.path(), None);
        area.create().unwrap();
        assert_eq!(area.next(), None);
        area.set_next(&seg(1, 0, 9), 16 << 20).unwrap();
        assert_eq!(area.next(), Some((seg(1, 0, 9), 16 << 20)));
        area.set_next(&seg(1, 0, 10), 1 << 30).unwrap();
        assert_eq!(area.next(), Some((seg(1, 0, 10), 1 << 30)));
        // A line torn by a racing rewrite fails its check; an older wal-fetch's has none.
        let path = area.root().join(".next");
        let torn = std::fs::read_to_string(&path)
            .unwrap()
            .replace("0A ", "09 ");
        std::fs::write(&path, torn).unwrap();
        assert_eq!(area.next(), None);
        std::fs::write(&path, "00000001000000000000000B 16777216\n").unwrap();
        assert_eq!(area.next(), Some((seg(1, 0, 11), 16 << 20)));
        let lock = area.try_lock().unwrap();
        assert!(lock.is_some());
        assert!(area.prefetcher_running());
        drop(lock);
        assert!(!area.prefetcher_running());
    }
}
