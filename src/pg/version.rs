//! What differs between PostgreSQL major versions, in one place: which majors wale
//! restores, how recovery is requested (`recovery.conf` up to 11, signal files from 12),
//! how a paused replay is asked about, and the WAL sizes a segment size needs.
//!
//! The control file layouts of each major are in [`super::control`]; everything else a
//! command needs to know about a version is asked here, never decided by comparing
//! version numbers at the call site.

use std::fmt;

/// The majors wale restores, oldest first.
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 10..=18;

/// A PostgreSQL major version wale knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Major(u32);

/// A major version outside [`SUPPORTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "PostgreSQL {0} is not supported: wale restores PostgreSQL 10 to 18 (older WAL-E archives need WAL-E or a dump)"
)]
pub struct Unsupported(pub u32);

/// How a data directory asks PostgreSQL for archive recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryConfig {
    /// PostgreSQL 10 and 11: `recovery.conf` in the data directory holds
    /// `restore_command`, the targets and `standby_mode`; the server renames it to
    /// `recovery.done` when recovery ends.
    RecoveryConf,
    /// PostgreSQL 12 and later: the settings are ordinary configuration parameters and
    /// `standby.signal` or `recovery.signal` asks for recovery.
    SignalFiles,
}

impl Major {
    /// The major `number`, if wale restores it.
    pub fn new(number: u32) -> Result<Major, Unsupported> {
        if SUPPORTED.contains(&number) {
            Ok(Major(number))
        } else {
            Err(Unsupported(number))
        }
    }

    /// The version number, e.g. 15.
    pub fn number(self) -> u32 {
        self.0
    }

    /// Where recovery settings go.
    pub fn recovery_config(self) -> RecoveryConfig {
        if self.0 <= 11 {
            RecoveryConfig::RecoveryConf
        } else {
            RecoveryConfig::SignalFiles
        }
    }

    /// Whether `max_wal_senders` is one of the settings a hot standby checks against
    /// the primary's (PostgreSQL 12 moved it out of `max_connections` and into
    /// `pg_control`).
    pub fn checks_max_wal_senders(self) -> bool {
        self.0 >= 12
    }

    /// A boolean SQL expression, true while replay is paused or a pause was requested
    /// (`pg_get_wal_replay_pause_state()` from 14, `pg_is_wal_replay_paused()` before).
    pub fn replay_paused_sql(self) -> &'static str {
        if self.0 >= 14 {
            "pg_get_wal_replay_pause_state() <> 'not paused'"
        } else {
            "pg_is_wal_replay_paused()"
        }
    }
}

impl fmt::Display for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `min_wal_size` and `max_wal_size`, in MB, for a server with `segment_size`-byte WAL
/// segments: PostgreSQL's defaults (80 MB, 1 GB) unless the segment size needs more
/// (both must be at least two segments, or the server refuses to start).
pub fn wal_size_settings_mb(segment_size: u32) -> (u64, u64) {
    let segment_mb = u64::from(segment_size) >> 20;
    (
        80.max(2 * segment_mb.max(1)),
        1024.max(4 * segment_mb.max(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_answers_for_every_supported_major() {
        assert_eq!(Major::new(9), Err(Unsupported(9)));
        assert_eq!(Major::new(19), Err(Unsupported(19)));
        assert!(Unsupported(9).to_string().contains("10 to 18"));
        let eleven = Major::new(11).unwrap();
        assert_eq!(eleven.recovery_config(), RecoveryConfig::RecoveryConf);
        assert!(!eleven.checks_max_wal_senders());
        assert_eq!(eleven.replay_paused_sql(), "pg_is_wal_replay_paused()");
        let seventeen = Major::new(17).unwrap();
        assert_eq!(seventeen.recovery_config(), RecoveryConfig::SignalFiles);
        assert!(seventeen.checks_max_wal_senders());
        assert!(seventeen.replay_paused_sql().contains("pause_state"));
    }

    #[test]
    fn wal_sizes_follow_the_segment_size() {
        assert_eq!(wal_size_settings_mb(16 << 20), (80, 1024));
        assert_eq!(wal_size_settings_mb(1 << 20), (80, 1024));
        assert_eq!(wal_size_settings_mb(64 << 20), (128, 1024));
        assert_eq!(wal_size_settings_mb(1 << 30), (2048, 4096));
    }
}
