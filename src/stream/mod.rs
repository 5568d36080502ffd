//! wale's WAL stream: a standby's fast path past the per-file `restore_command`.
//!
//! `restore --standby` points the standby's `primary_conninfo` at a Unix socket in
//! `<pg_wal>/.wal-e/stream/` (mode 0700: only the server's owner can reach it, and the
//! server checks the peer's uid too). There a small wale process speaks PostgreSQL's
//! physical replication protocol (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`,
//! `START_REPLICATION … TIMELINE n`, keepalives, the end of a timeline) and serves the
//! archive's segments, decoded and checked, to the walreceiver. The walreceiver writes
//! them into `pg_wal` while the startup process replays: no process is forked per
//! segment and replay never waits for a file's fsync.
//!
//! PostgreSQL takes WAL from the archive first. So `wal-fetch`, asked by a standby for a
//! segment while the stream serves, answers "not here" at once ([`StreamDir::takes_segments`]);
//! PostgreSQL then looks in `pg_wal` and turns to streaming. When the stream is down, or
//! failed lately, or no walreceiver came to it for a minute, `wal-fetch` fetches the
//! segment itself as before: the `restore_command` path is the fallback and never goes
//! away. `wal-fetch` also starts the stream's process when none runs, as it does the
//! prefetcher; the process exits after a minute with no walreceiver.
//!
//! [`source`] reads the archive, [`session`] speaks to one walreceiver, [`wire`] is the
//! protocol's framing.

pub mod session;
pub mod source;
pub mod wire;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UnixListener;

use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::pg::datadir::DataDir;
use source::ArchiveWal;

/// The port in the socket's name (`.s.PGSQL.<port>`); only the directory is private.
pub const PORT: u16 = 5432;

/// The longest socket path the kernel takes (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// After this long without a walreceiver, `wal-fetch` serves segments itself again
/// (the standby is not configured for the stream, or cannot reach it), and the
/// stream's process exits.
const UNUSED_AFTER: Duration = Duration::from_secs(60);

/// After the stream failed a walreceiver (a corrupt or unreadable segment), `wal-fetch`
/// serves segments itself for this long, reporting the failure as it does.
const FAILURE_HOLD: Duration = Duration::from_secs(30);

/// How long `wal-fetch` waits for the stream's process it started to listen.
const START_WAIT: Duration = Duration::from_secs(1);

const SOCKET_DIR: &str = "stream";
const LOCK_FILE: &str = ".lock";
const STATE_FILE: &str = "clients";
const FAILURE_FILE: &str = "failure";
const PROMOTE_AT_END_FILE: &str = "promote-at-end";
const TIMELINE_GOAL_FILE: &str = "timeline";

/// The stream's directory of one data directory: the socket, the lock of the one
/// process serving it, its client count and its last failure.
#[derive(Debug, Clone)]
pub struct StreamDir {
    root: PathBuf,
}

impl StreamDir {
    /// The stream directory of the data directory `pgdata`: in its WAL directory,
    /// resolved (beside the prefetch area).
    pub fn of_data_dir(pgdata: &Path) -> StreamDir {
        StreamDir {
            root: DataDir::new(pgdata)
                .wal_dir()
                .join(".wal-e")
                .join(SOCKET_DIR),
        }
    }

    /// The socket directory (`host` in `primary_conninfo`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The socket's path.
    pub fn socket(&self) -> PathBuf {
        self.root.join(format!(".s.PGSQL.{PORT}"))
    }

    /// Whether the socket's path fits the kernel's limit.
    pub fn socket_path_fits(&self) -> bool {
        self.socket().as_os_str().len() <= MAX_SOCKET_PATH
    }

    /// `primary_conninfo` for a standby of this data directory.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={PORT} application_name=wale",
            crate::pg::conf::conninfo_quote(&self.root.to_string_lossy())
        )
    }

    /// Creates the directory (mode 0700): the server is to use the stream. With
    /// `promote_at_end`, a recovery to the end of the archive run as a standby: it is
    /// promoted once it has everything the archive holds
    /// ([`crate::pg::server::request_promotion`]). `timeline_goal` is the newest timeline
    /// the server follows (its `recovery_target_timeline`, `None` for `latest`): the
    /// stream looks for none past it, as PostgreSQL does not.
    pub fn enable(&self, promote_at_end: bool, timeline_goal: Option<u32>) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))?;
        if promote_at_end {
            crate::durable::replace_file(&self.root.join(PROMOTE_AT_END_FILE), b"")?;
        }
        if let Some(timeline) = timeline_goal {
            let goal = self.root.join(TIMELINE_GOAL_FILE);
            crate::durable::replace_file(&goal, timeline.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// The newest timeline the server follows, as [`StreamDir::enable`] recorded it; `None`
    /// for the newest in the archive.
    pub fn timeline_goal(&self) -> Option<u32> {
        let text = fs::read_to_string(self.root.join(TIMELINE_GOAL_FILE)).ok()?;
        text.trim().parse().ok()
    }

    /// Whether the server recovers to the end of the archive (not a standby for good).
    pub fn promotes_at_end(&self) -> bool {
        self.root.join(PROMOTE_AT_END_FILE).exists()
    }

    /// Whether `restore --standby` set this data directory up for the stream.
    pub fn is_enabled(&self) -> bool {
        self.root.is_dir()
    }

    /// Takes the lock of the serving process if nobody holds it.
    fn try_lock(&self) -> io::Result<Option<File>> {
        crate::durable::try_lock(&self.root.join(LOCK_FILE))
    }

    /// The lock, unless another process holds it for good: a `wal-fetch` that checks
    /// [`StreamDir::is_served`] holds it for a moment, which must not make the process it
    /// just started give up.
    async fn lock_unless_served(&self) -> Result<Option<File>, Error> {
        for _ in 0..5 {
            if let Some(lock) = self
                .try_lock()
                .map_err(|e| Error::local(&self.root, "cannot lock", e))?
            {
                return Ok(Some(lock));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(None)
    }

    /// Whether a process serves the stream.
    pub fn is_served(&self) -> bool {
        matches!(self.try_lock(), Ok(None))
    }

    /// Whether a standby's `wal-fetch` should leave its segment to the stream: it did not
    /// fail lately, is served (started now if it was not, see [`StreamDir::start`]), and
    /// has a walreceiver (or had one, or started, less than [`UNUSED_AFTER`] ago).
    pub fn takes_segments(&self, pgdata: &Path, relaunch: &[std::ffi::OsString]) -> bool {
        if self.failed_within(FAILURE_HOLD).is_some() {
            return false;
        }
        if !self.is_served() && !self.start(pgdata, relaunch) {
            return false;
        }
        self.read_clients()
            .is_some_and(|(clients, changed)| clients > 0 || age(changed) < UNUSED_AFTER)
    }

    /// The last failure, when it is younger than `within`.
    pub fn failed_within(&self, within: Duration) -> Option<String> {
        let text = fs::read_to_string(self.root.join(FAILURE_FILE)).ok()?;
        let (at, reason) = text.trim_end().split_once(' ')?;
        (age(at.parse().ok()?) < within).then(|| reason.to_string())
    }

    fn record_failure(&self, reason: &str) {
        let line = format!("{} {}\n", unix_millis(), reason.replace('\n', " "));
        let _ = crate::durable::replace_file(&self.root.join(FAILURE_FILE), line.as_bytes());
    }

    fn write_clients(&self, clients: usize) {
        let line = format!("{clients} {}\n", unix_millis());
        let _ = crate::durable::replace_file(&self.root.join(STATE_FILE), line.as_bytes());
    }

    fn read_clients(&self) -> Option<(usize, u64)> {
        let text = fs::read_to_string(self.root.join(STATE_FILE)).ok()?;
        let (clients, changed) = text.trim_end().split_once(' ')?;
        Some((clients.parse().ok()?, changed.parse().ok()?))
    }

    /// Starts the stream's process for `pgdata` ([`crate::detached::spawn`]) and waits up
    /// to [`START_WAIT`] for it to listen, so that the call that started it can already
    /// leave its segment to it. True once it listens.
    fn start(&self, pgdata: &Path, relaunch: &[std::ffi::OsString]) -> bool {
        let args = [
            std::ffi::OsString::from("wal-stream"),
            pgdata.as_os_str().to_owned(),
        ];
        crate::detached::spawn(relaunch, &args, "the WAL stream");
        let started = std::time::Instant::now();
        while started.elapsed() < START_WAIT {
            if self.is_listening() {
                return true;
            }
            if self.failed_within(FAILURE_HOLD).is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Whether a process serves the stream and listens on its socket (it writes its
    /// client count once it does).
    fn is_listening(&self) -> bool {
        self.is_served() && self.read_clients().is_some()
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long ago a [`unix_millis`] instant was (zero for one in the future).
fn age(millis: u64) -> Duration {
    Duration::from_millis(unix_millis().saturating_sub(millis))
}

/// Serves the stream of the data directory `pgdata` until no walreceiver has come for
/// [`UNUSED_AFTER`]; returns at once when another process serves it.
pub async fn serve(config: &Config, decoding: &Decoding, pgdata: &Path) -> Result<(), Error> {
    let dir = StreamDir::of_data_dir(pgdata);
    if !dir.is_enabled() {
        return Err(Error::Usage(format!(
            "{} has no WAL stream directory {}: `wale restore --standby` sets one up",
            pgdata.display(),
            dir.root().display()
        )));
    }
    let Some(_lock) = dir.lock_unless_served().await? else {
        tracing::debug!("the WAL stream of {} is served already", pgdata.display());
        return Ok(());
    };
    // Whatever count is there was left by a process that died: not listening yet.
    let _ = fs::remove_file(dir.root().join(STATE_FILE));
    let served = listen_and_serve(config, decoding, pgdata, &dir).await;
    if let Err(err) = &served {
        dir.record_failure(&err.to_string());
    }
    served
}

/// [`serve`] holding the lock: the cluster's identity, the archive, the socket, then
/// the walreceivers.
async fn listen_and_serve(
    config: &Config,
    decoding: &Decoding,
    pgdata: &Path,
    dir: &StreamDir,
) -> Result<(), Error> {
    let control = crate::pg::control::read(pgdata).await?;
    let archive = ArchiveWal::open(
        config,
        decoding,
        control.system_identifier,
        u64::from(control.segment_size),
        dir.timeline_goal(),
    )
    .await?;
    let socket = dir.socket();
    let _ = fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(|e| Error::local(&socket, "cannot listen on", e))?;
    let context = Arc::new(session::Context {
        pgdata: pgdata.to_path_buf(),
        promote_at_end: dir.promotes_at_end(),
        archive,
        major_version: control.major_version,
        fetch_state: DataDir::new(pgdata).fetch_state(),
        prefetch_bytes: config.prefetch.max_bytes,
    });
    dir.write_clients(0);
    tracing::info!("serving the WAL stream on {}", socket.display());
    let result = accept_until_unused(dir, &listener, &context).await;
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(dir.root().join(STATE_FILE));
    result
}

/// Accepts walreceivers, one session each, until none has been connected for
/// [`UNUSED_AFTER`].
async fn accept_until_unused(
    dir: &StreamDir,
    listener: &UnixListener,
    context: &Arc<session::Context>,
) -> Result<(), Error> {
    let clients = Arc::new(AtomicUsize::new(0));
    let mut last_change = std::time::Instant::now();
    loop {
        let nap = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            accepted = listener.accept() => {
                let (connection, _) = accepted
                    .map_err(|e| Error::local(dir.socket(), "cannot accept on", e))?;
                let (dir, context, clients) = (dir.clone(), context.clone(), clients.clone());
                dir.write_clients(clients.fetch_add(1, Ordering::SeqCst) + 1);
                tokio::spawn(async move {
                    if let Err(failure) = session::run(connection, &context).await {
                        tracing::error!("WAL stream: {failure}");
                        dir.record_failure(&failure.to_string());
                    }
                    dir.write_clients(clients.fetch_sub(1, Ordering::SeqCst) - 1);
                });
                last_change = std::time::Instant::now();
            }
            () = nap => {
                if clients.load(Ordering::SeqCst) > 0 {
                    last_change = std::time::Instant::now();
                } else if last_change.elapsed() > UNUSED_AFTER {
                    tracing::info!("no walreceiver for {UNUSED_AFTER:?}; the WAL stream ends");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `restore` records for the stream is what the stream reads back: the marker of
    /// a recovery to the end and the timeline goal, absent when not given.
    #[test]
    fn enable_records_the_promotion_and_the_timeline_goal() {
        let dir = tempfile::tempdir().unwrap();
        let goal = StreamDir {
            root: dir.path().join("goal"),
        };
        goal.enable(true, Some(3)).unwrap();
        assert!(goal.is_enabled() && goal.promotes_at_end());
        assert_eq!(goal.timeline_goal(), Some(3));
        let mode = fs::metadata(goal.root()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let latest = StreamDir {
            root: dir.path().join("latest"),
        };
        latest.enable(false, None).unwrap();
        assert!(latest.is_enabled() && !latest.promotes_at_end());
        assert_eq!(latest.timeline_goal(), None);
    }

    /// A lock held for a moment (a `wal-fetch` probing whether the stream is served) is
    /// waited for; a lock held for good means the stream is served already.
    #[tokio::test]
    async fn a_lock_held_for_a_moment_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamDir {
            root: dir.path().to_path_buf(),
        };
        let held = stream.try_lock().unwrap().expect("free at first");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(15));
            drop(held);
        });
        assert!(stream.lock_unless_served().await.unwrap().is_some());
        release.join().unwrap();
        let _for_good = stream.try_lock().unwrap().expect("free again");
        assert!(stream.lock_unless_served().await.unwrap().is_none());
    }
}
