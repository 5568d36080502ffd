//! What `wal-fetch` remembers between calls for `wale status`: the last segment the
//! archive answered "not found" for (proof that recovery has read everything before it),
//! and the last failure (which a standby otherwise only shows in its log).
//!
//! Both live in `<pg_wal>/.wale-status/` (inside `pg_wal`, which base backups leave out),
//! one small file each, replaced by rename so a reader never sees half a record. They
//! are written only when `wal-fetch` runs in a data directory (PostgreSQL runs
//! `restore_command` there), and they are hints for a human-facing report, not data: a
//! failure to write them is logged and ignored.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::wal::SegmentName;

const NOT_FOUND_FILE: &str = "last-not-found";
const ERROR_FILE: &str = "last-error";
const ANSWERED_FILE: &str = "answered-not-found";

/// The state files of one WAL directory.
#[derive(Debug, Clone)]
pub struct FetchState {
    dir: PathBuf,
}

/// One recorded event: when, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Seconds since the epoch.
    pub unix_time: u64,
    /// A segment name, or an error line.
    pub text: String,
}

impl FetchState {
    /// The state of the WAL directory `wal_dir` (PostgreSQL's `pg_wal`, resolved).
    pub fn for_wal_dir(wal_dir: &Path) -> FetchState {
        FetchState {
            dir: wal_dir.join(".wale-status"),
        }
    }

    /// The archive has no `segment`: recovery has read everything before it.
    pub fn record_not_found(&self, segment: &SegmentName) {
        self.write(NOT_FOUND_FILE, &segment.to_string());
    }

    /// A fetch failed for a reason other than absence.
    pub fn record_error(&self, line: &str) {
        self.write(ERROR_FILE, line);
    }

    /// A fetch succeeded: an earlier failure is history, and recovery has moved on.
    pub fn clear_error(&self) {
        let _ = std::fs::remove_file(self.dir.join(ERROR_FILE));
        let _ = std::fs::remove_file(self.dir.join(ANSWERED_FILE));
    }

    /// Notes that `name` was answered "not found" at this position of recovery; true if it
    /// already was (a standby at the end of the archive asks again every few seconds, and
    /// the answer is news only once). Forgotten at the next successful fetch.
    pub fn answered_not_found_before(&self, name: &str) -> bool {
        let path = self.dir.join(ANSWERED_FILE);
        let known = std::fs::read_to_string(&path).unwrap_or_default();
        if known.lines().any(|line| line == name) {
            return true;
        }
        // Recovery asks for at most a segment and a history file or two at one position.
        let mut names: Vec<&str> = known.lines().rev().take(7).collect();
        names.reverse();
        names.push(name);
        let _ = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, names.join("\n") + "\n"));
        false
    }

    /// The last "not found" segment.
    pub fn last_not_found(&self) -> Option<(Record, SegmentName)> {
        let record = self.read(NOT_FOUND_FILE)?;
        let segment = SegmentName::parse(&record.text)?;
        Some((record, segment))
    }

    /// The last failure, if none succeeded since.
    pub fn last_error(&self) -> Option<Record> {
        self.read(ERROR_FILE)
    }

    fn write(&self, name: &str, text: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let record = format!("{now} {text}\n");
            crate::durable::replace_file(&self.dir.join(name), record.as_bytes())
        });
        if let Err(err) = result {
            tracing::debug!("cannot record {name} in {}: {err}", self.dir.display());
        }
    }

    fn read(&self, name: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.dir.join(name)).ok()?;
        let (time, rest) = text.trim_end().split_once(' ')?;
        Some(Record {
            unix_time: time.parse().ok()?,
            text: rest.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_errors_clear() {
        let dir = tempfile::tempdir().unwrap();
        let state = FetchState::for_wal_dir(dir.path());
        assert_eq!(state.last_not_found(), None);
        let segment = SegmentName::parse("00000002000000000000000C").unwrap();
        state.record_not_found(&segment);
        assert_eq!(state.last_not_found().unwrap().1, segment);
        state.record_error("s3://b/k: access denied");
        assert_eq!(state.last_error().unwrap().text, "s3://b/k: access denied");
        state.clear_error();
        assert_eq!(state.last_error(), None);
        assert!(!state.answered_not_found_before("00000003.history"));
        assert!(state.answered_not_found_before("00000003.history"));
        state.clear_error();
        assert!(!state.answered_not_found_before("00000003.history"));
    }
}
