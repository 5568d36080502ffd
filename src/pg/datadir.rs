//! A data directory as wale finds it after a restore: its major version, how it asks for
//! recovery (signal files or `recovery.conf`), the recovery target it was given, its WAL
//! directory, and what `wale restore` recorded about it (the server binaries it used).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::conf;
use super::version::{Major, Unsupported};
use crate::fetch_state::FetchState;
use crate::wal::{TimelineSwitch, WalFileKind};

/// The file `wale restore` records its choices in, inside the data directory.
pub const RESTORE_RECORD: &str = "wale-restore.json";

/// Why a data directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// `PG_VERSION` names no major version.
    #[error("{}: no major version in {text:?}", path.display())]
    NoVersion {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// A version wale does not restore.
    #[error("{}: {source}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The version.
        source: Unsupported,
    },
}

/// How the data directory asks PostgreSQL to recover, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryRequest {
    /// A standby: `standby.signal`, or `standby_mode = on` in `recovery.conf`.
    Standby,
    /// Archive recovery to a target or to the end: `recovery.signal`, or `recovery.conf`
    /// without standby mode.
    Archive,
    /// No recovery asked for (never restored, or promoted since).
    None,
}

/// What `wale restore` wrote down, first thing, in the data directory it fills: which
/// restore this is (so that the same command run again after a kill recognises its own
/// work), what it may remove again, and, once complete, what `status` and `promote` need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// The backup restored.
    pub backup: String,
    /// The major version of the backup.
    pub major: u32,
    /// The directory of the server binaries the restore used.
    pub pg_bin: PathBuf,
    /// Whether the restore finished (fetched and configured); until then the tree is
    /// work in progress that the same command removes and redoes.
    #[serde(default)]
    pub complete: bool,
    /// The restore's request (its arguments that decide the result), as the restore wrote it.
    #[serde(default)]
    pub request: serde_json::Value,
    /// What the restore created or filled, with whether each existed before it.
    #[serde(default)]
    pub places: Vec<(PathBuf, bool)>,
}

/// A PostgreSQL data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// The data directory at `path`.
    pub fn new(path: &Path) -> DataDir {
        DataDir {
            path: path.to_path_buf(),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The major version in `PG_VERSION` (read without following a symlink: the tree may
    /// come from an archive).
    pub fn major(&self) -> Result<Major, Error> {
        let path = self.path.join("PG_VERSION");
        let text = crate::durable::read_small_file(&path)
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?
            .unwrap_or_default();
        let number =
            super::server::major_of_version_text(&text).ok_or_else(|| Error::NoVersion {
                path: path.clone(),
                text: text.trim().to_string(),
            })?;
        Major::new(number).map_err(|source| Error::Unsupported { path, source })
    }

    /// How recovery is requested.
    pub fn recovery_request(&self) -> RecoveryRequest {
        if self.path.join("standby.signal").is_file() {
            return RecoveryRequest::Standby;
        }
        if let Some(text) = self.read("recovery.conf") {
            let standby = settings_of(&text)
                .iter()
                .rev()
                .find(|s| s.name == "standby_mode")
                .is_some_and(|s| is_on(&s.value));
            return if standby {
                RecoveryRequest::Standby
            } else {
                RecoveryRequest::Archive
            };
        }
        if self.path.join("recovery.signal").is_file() {
            return RecoveryRequest::Archive;
        }
        RecoveryRequest::None
    }

    /// The recovery target the configuration names, as `name = 'value'` (the last
    /// non-empty one wins, as in PostgreSQL); `None` when recovery runs to the end.
    pub fn recovery_target(&self) -> Option<String> {
        let mut target = None;
        for file in ["postgresql.conf", "postgresql.auto.conf", "recovery.conf"] {
            let Some(text) = self.read(file) else {
                continue;
            };
            for setting in settings_of(&text) {
                let is_target = matches!(
                    setting.name.as_str(),
                    "recovery_target"
                        | "recovery_target_name"
                        | "recovery_target_time"
                        | "recovery_target_xid"
                        | "recovery_target_lsn"
                );
                if is_target && !setting.value.is_empty() {
                    target = Some(format!(
                        "{} = {}",
                        setting.name,
                        conf::quote(&setting.value)
                    ));
                }
            }
        }
        target
    }

    /// The WAL directory, `pg_wal` resolved.
    pub fn wal_dir(&self) -> PathBuf {
        let wal = self.path.join("pg_wal");
        std::fs::canonicalize(&wal).unwrap_or(wal)
    }

    /// What `wal-fetch` recorded for this directory.
    pub fn fetch_state(&self) -> FetchState {
        FetchState::for_wal_dir(&self.wal_dir())
    }

    /// What `wale restore` recorded, if it made this directory.
    pub fn restore_record(&self) -> Option<RestoreRecord> {
        serde_json::from_str(&self.read(RESTORE_RECORD)?).ok()
    }

    /// Records `record` (durably; readable by the owner only).
    pub fn write_restore_record(&self, record: &RestoreRecord) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
        crate::durable::write_file(
            &self.path.join(RESTORE_RECORD),
            format!("{text}\n").as_bytes(),
            0o600,
            None,
        )
    }

    /// The timelines whose history files are in the WAL directory, with each one's
    /// ancestors' switch points, oldest timeline first.
    pub fn timeline_histories(&self) -> Vec<(u32, Vec<TimelineSwitch>)> {
        let Ok(entries) = std::fs::read_dir(self.wal_dir()) else {
            return Vec::new();
        };
        let mut histories: Vec<_> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let WalFileKind::History(timeline) = WalFileKind::of(&name) else {
                    return None;
                };
                let text = crate::durable::read_small_file(&entry.path()).ok()??;
                Some((timeline, crate::wal::parse_history(&text).ok()?))
            })
            .collect();
        histories.sort_by_key(|(timeline, _)| *timeline);
        histories
    }

    fn read(&self, name: &str) -> Option<String> {
        crate::durable::read_small_file(&self.path.join(name))
            .ok()
            .flatten()
    }
}

/// The settings of a configuration file's text.
fn settings_of(text: &str) -> Vec<conf::Setting> {
    text.lines().filter_map(conf::parse_line).collect()
}

/// A boolean setting's "on", as PostgreSQL spells it.
fn is_on(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// Marks a WAL file in `wal_dir` as archived already (`archive_status/NAME.done`), as
/// PostgreSQL does for a file it restored from the archive: an archiver running on this
/// server (`archive_mode = always`, or after promotion) must not push it again.
pub fn mark_archived(wal_dir: &Path, name: &str) -> std::io::Result<()> {
    let status = wal_dir.join("archive_status");
    std::fs::create_dir_all(&status)?;
    std::fs::File::create(status.join(format!("{name}.done"))).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_is_asked_for_by_signal_files_or_recovery_conf() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert_eq!(data.recovery_request(), RecoveryRequest::None);
        std::fs::write(dir.path().join("recovery.signal"), "").unwrap();
        assert_eq!(data.recovery_request(), RecoveryRequest::Archive);
        std::fs::remove_file(dir.path().join("recovery.signal")).unwrap();
        std::fs::write(
            dir.path().join("recovery.conf"),
            "restore_command = 'x'\nstandby_mode = 'on'\n",
        )
        .unwrap();
        assert_eq!(data.recovery_request(), RecoveryRequest::Standby);
        std::fs::write(
            dir.path().join("recovery.conf"),
            "standby_mode = off\nrecovery_target_name = 'wale_pitr'\n",
        )
        .unwrap();
        assert_eq!(data.recovery_request(), RecoveryRequest::Archive);
        assert_eq!(
            data.recovery_target().as_deref(),
            Some("recovery_target_name = 'wale_pitr'")
        );
        std::fs::write(dir.path().join("standby.signal"), "").unwrap();
        assert_eq!(data.recovery_request(), RecoveryRequest::Standby);
    }

    #[test]
    fn versions_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        assert!(matches!(data.major(), Err(Error::NoVersion { .. })));
        std::fs::write(dir.path().join("PG_VERSION"), "9.6\n").unwrap();
        assert!(matches!(data.major(), Err(Error::Unsupported { .. })));
        std::fs::write(dir.path().join("PG_VERSION"), "11\n").unwrap();
        assert_eq!(data.major().unwrap().number(), 11);
        assert_eq!(data.restore_record(), None);
        let record = RestoreRecord {
            backup: "base_000000010000000000000002_00000028".into(),
            major: 11,
            pg_bin: "/opt/pg11/bin".into(),
            complete: true,
            request: serde_json::json!({"standby": true}),
            places: vec![("/srv/data".into(), false)],
        };
        data.write_restore_record(&record).unwrap();
        assert_eq!(data.restore_record(), Some(record));
    }
}
