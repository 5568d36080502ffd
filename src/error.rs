//! The error every command returns, its [`Kind`], and the one place that turns a kind
//! into an exit status ([`exit::status`]), `wal-fetch`'s rules included.
//!
//! PostgreSQL reads `restore_command`'s status: 0 means restored; any other status below
//! 126 means "not available", which during archive recovery *ends recovery and promotes*;
//! a status above 125 (or a signal) aborts recovery. So wale exits 1 only when the object
//! is truly absent, and exits above 125 whenever the object may exist but could not be
//! delivered intact, so that a network outage or a corrupt object stops recovery loudly
//! instead of silently promoting at the wrong point.

use std::path::PathBuf;

use crate::text::bytes_text;
use crate::{config, lzop, storage};

/// Exit statuses (documented in the README).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The WAL file or backup is not in the archive (a 404 / `ENOENT`).
    pub const NOT_FOUND: u8 = 1;
    /// `wal-fetch` under PostgreSQL: the prefetched segment now waits in `pg_wal` under
    /// its own name, where PostgreSQL reads it after a non-zero `restore_command`.
    pub const HANDED_OVER: u8 = 1;
    /// Bad command line or configuration (clap also uses 2 for usage errors).
    pub const USAGE: u8 = 2;
    /// The store kept failing with transient errors until retries ran out.
    pub const UNAVAILABLE: u8 = 200;
    /// The store refused access, or the bucket, region or object state is wrong.
    pub const STORE_REFUSED: u8 = 201;
    /// The object exists but is corrupt, truncated, encrypted or not what it should be.
    pub const CORRUPT: u8 = 202;
    /// A local file or directory could not be read or written.
    pub const LOCAL: u8 = 203;
    /// A usage or configuration error under `wal-fetch`: above 125, so that a broken
    /// envdir stops archive recovery instead of ending it and promoting the server.
    pub const WAL_FETCH_USAGE: u8 = 204;
    /// Interrupted by SIGINT or SIGTERM (the shell's 128 + SIGINT).
    pub const INTERRUPTED: u8 = 130;
    /// `wal-fetch` for a standby could not deliver for a local reason (a full disk): not
    /// 1, which means "not in the archive", but below 126 so that PostgreSQL asks again
    /// instead of shutting the standby down (`EX_TEMPFAIL`).
    pub const STANDBY_RETRY: u8 = 75;

    use super::Kind;

    /// Who is failing: `wal-fetch` answers PostgreSQL, which reads its status its own way.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Caller {
        /// Any command but `wal-fetch`, and `wal-fetch` run by hand.
        Command,
        /// `wal-fetch` as `restore_command` in archive recovery, or a `wal-fetch` command
        /// line clap refused (nothing ran that a retry could mend).
        WalFetch,
        /// `wal-fetch` as a standby's `restore_command` (`standby.signal`).
        StandbyWalFetch,
    }

    /// The exit policy, in one place: the status a failure of `kind` exits with.
    ///
    /// "Not found" is 1 for everyone. Under `wal-fetch` any other failure must not read as
    /// "not available" (below 126), which would end archive recovery and promote: usage
    /// and configuration errors exit [`WAL_FETCH_USAGE`] rather than 2. A standby is the
    /// exception: a status above 125 would shut it down, so it exits 1 and asks again a
    /// few seconds later, or [`STANDBY_RETRY`] for a full disk (which is not "not in the
    /// archive").
    pub fn status(kind: Kind, caller: Caller) -> u8 {
        match (caller, kind) {
            (_, Kind::NotFound) => NOT_FOUND,
            (Caller::StandbyWalFetch, Kind::NoSpace) => STANDBY_RETRY,
            (Caller::StandbyWalFetch, _) => NOT_FOUND,
            (Caller::WalFetch, Kind::Usage) => WAL_FETCH_USAGE,
            (_, Kind::Usage) => USAGE,
            (_, Kind::Unavailable) => UNAVAILABLE,
            (_, Kind::StoreRefused) => STORE_REFUSED,
            (_, Kind::Corrupt) => CORRUPT,
            (_, Kind::NoSpace | Kind::Local) => LOCAL,
            (_, Kind::Interrupted) => INTERRUPTED,
        }
    }
}

/// What kind of failure an [`Error`] is: what its exit status says ([`exit::status`]),
/// and what callers that act on a failure ask of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bad argument or configuration.
    Usage,
    /// Not in the archive.
    NotFound,
    /// The store kept failing with transient errors, or could not be reached.
    Unavailable,
    /// The store refused access, or the bucket, region or object state is wrong.
    StoreRefused,
    /// An object whose contents are wrong.
    Corrupt,
    /// A file system ran out of space.
    NoSpace,
    /// Any other local failure: a file, the PostgreSQL server, wale itself.
    Local,
    /// Stopped by SIGINT or SIGTERM.
    Interrupted,
}

/// Everything a command can fail with, each naming the object or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A bad argument that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// A storage failure.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// An object whose contents are wrong.
    #[error("{url}: {reason}")]
    Corrupt {
        /// The object.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing in the archive matches what was asked for (e.g. a backup name).
    #[error("{0}")]
    NotFound(String),
    /// A local file-system failure.
    #[error("{}: {action}: {source}", path.display())]
    Local {
        /// The file or directory.
        path: PathBuf,
        /// What wale was doing.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file system ran out of space while wale wrote `path`.
    #[error("{}: no space left on the file system ({}{})", path.display(), free_text(*free), needed_text(*needed))]
    NoSpace {
        /// The file or directory being written.
        path: PathBuf,
        /// What is free there now, when it can be read.
        free: Option<u64>,
        /// What the whole operation needs, when known.
        needed: Option<u64>,
    },
    /// A PostgreSQL server wale started or asked did not do what it should.
    #[error("PostgreSQL: {detail} (log: {})", log.display())]
    Server {
        /// What went wrong, in one line.
        detail: String,
        /// The server's log.
        log: PathBuf,
    },
    /// A failure inside wale itself (a worker task died).
    #[error("internal error: {0}")]
    Internal(String),
    /// Stopped by SIGINT or SIGTERM (or work cancelled because of it).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// A local failure on `path`; a full file system is [`Error::NoSpace`], with what is
    /// free there.
    pub fn local(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Error {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            let free = free_space_near(&path);
            return Error::NoSpace {
                path,
                free,
                needed: None,
            };
        }
        Error::Local {
            path,
            action,
            source,
        }
    }

    /// The object at `url` holds something wrong: `reason` (a typed parse error, or a
    /// sentence) says what. The one way an object's contents become [`Error::Corrupt`].
    pub fn corrupt(url: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            url: url.into(),
            reason: reason.to_string(),
        }
    }

    /// Says how much space the operation needed, when this is [`Error::NoSpace`].
    pub fn needing(self, bytes: u64) -> Error {
        match self {
            Error::NoSpace { path, free, .. } => Error::NoSpace {
                path,
                free,
                needed: Some(bytes),
            },
            other => other,
        }
    }

    /// A failure reading an object through the decode chain (body → lzop → tar), classified
    /// here once: bad lzop data is corrupt; a store failure keeps the class the store gave it
    /// (the resuming reader passes it up inside the I/O error); any other read failure is
    /// transient.
    pub fn from_read(url: &str, io: std::io::Error) -> Error {
        if io
            .get_ref()
            .is_some_and(|inner| inner.is::<lzop::Error>() || inner.is::<crate::decrypt::Error>())
        {
            return Error::Corrupt {
                url: url.to_string(),
                reason: io.to_string(),
            };
        }
        if io
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::decrypt::KeyError>())
        {
            return Error::Usage(format!("{url}: {io}"));
        }
        let text = io.to_string();
        match io
            .into_inner()
            .map(|inner| inner.downcast::<storage::Error>())
        {
            Some(Ok(store_error)) => Error::Storage(*store_error),
            _ => Error::Storage(storage::Error::Transient {
                url: url.to_string(),
                detail: format!("reading the object failed: {text}"),
            }),
        }
    }

    /// An lzop decoding failure: reading failed (see [`Error::from_read`]), or the data is
    /// corrupt.
    pub fn from_decode(url: &str, err: lzop::Error) -> Error {
        match err {
            lzop::Error::Read(io) => Error::from_read(url, io),
            bad => Error::Corrupt {
                url: url.to_string(),
                reason: bad.to_string(),
            },
        }
    }

    /// Whether this is the archive saying "no such object" (the one failure that exits 1).
    pub fn is_not_found(&self) -> bool {
        self.kind() == Kind::NotFound
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Config(_) | Error::Usage(_) => Kind::Usage,
            Error::NotFound(_) | Error::Storage(storage::Error::NotFound { .. }) => Kind::NotFound,
            Error::Storage(
                storage::Error::Transient { .. } | storage::Error::Unreachable { .. },
            ) => Kind::Unavailable,
            Error::Storage(
                storage::Error::AccessDenied { .. } | storage::Error::Permanent { .. },
            ) => Kind::StoreRefused,
            Error::Corrupt { .. } => Kind::Corrupt,
            Error::NoSpace { .. } => Kind::NoSpace,
            Error::Local { .. } | Error::Server { .. } | Error::Internal(_) => Kind::Local,
            Error::Interrupted => Kind::Interrupted,
        }
    }

    /// The exit status of this failure for `caller` (see [`exit::status`]).
    pub fn exit_status(&self, caller: exit::Caller) -> u8 {
        exit::status(self.kind(), caller)
    }
}

/// Free bytes on the file system of `path` (or its nearest existing ancestor).
fn free_space_near(path: &std::path::Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let stat = rustix::fs::statvfs(existing).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn free_text(free: Option<u64>) -> String {
    free.map_or_else(
        || "free space unknown".into(),
        |f| format!("{} free", bytes_text(f)),
    )
}

fn needed_text(needed: Option<u64>) -> String {
    needed.map_or_else(String::new, |n| format!(", {} needed", bytes_text(n)))
}

impl crate::retry::Retryable for Error {
    fn is_retryable(&self) -> bool {
        matches!(self, Error::Storage(e) if e.is_retryable())
    }

    fn is_unreachable(&self) -> bool {
        matches!(self, Error::Storage(storage::Error::Unreachable { .. }))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(err: tokio::task::JoinError) -> Error {
        Error::Internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absence_exits_one_and_failures_abort_recovery() {
        use exit::Caller;
        let url = || "s3://b/k".to_string();
        for caller in [Caller::Command, Caller::WalFetch, Caller::StandbyWalFetch] {
            assert_eq!(
                Error::Storage(storage::Error::NotFound { url: url() }).exit_status(caller),
                1
            );
        }
        let failures = [
            Error::Storage(storage::Error::Transient {
                url: url(),
                detail: String::new(),
            }),
            Error::Storage(storage::Error::AccessDenied {
                url: url(),
                detail: String::new(),
            }),
            Error::Corrupt {
                url: url(),
                reason: String::new(),
            },
            Error::local("/x", "writing", std::io::Error::other("disk full")),
        ];
        for err in failures {
            assert!(
                err.exit_status(Caller::WalFetch) > 125,
                "{err} would let PostgreSQL promote"
            );
            let standby = err.exit_status(Caller::StandbyWalFetch);
            assert!(
                (1..126).contains(&standby),
                "{err} would shut a standby down"
            );
        }
        let usage = Error::Usage("x".into());
        assert_eq!(usage.exit_status(Caller::Command), exit::USAGE);
        assert_eq!(usage.exit_status(Caller::WalFetch), exit::WAL_FETCH_USAGE);
        let full = Error::NoSpace {
            path: "/x".into(),
            free: None,
            needed: None,
        };
        assert_eq!(full.exit_status(Caller::Command), exit::LOCAL);
        assert_eq!(
            full.exit_status(Caller::StandbyWalFetch),
            exit::STANDBY_RETRY
        );
    }
}
