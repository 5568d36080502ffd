//! `restore --start`: the server started as its owner, watched until it accepts
//! connections (a standby), or until its recovery ends (a point-in-time restore), with
//! start-up failures explained in one line.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::chown_tree;
use super::plan::{Recovery, RestorePlan};
use crate::error::Error;
use crate::pg::conf;
use crate::pg::server::Binaries;
use crate::pg::server::{self as pg_server, Connection, PidFile};
use crate::pg::version::Major;
use crate::pool::Cancellation;
use crate::users;
use crate::users::User;

/// How long to wait for a server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a long recovery reports its position.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

use pg_server::log_path;

/// The restored server: its data directory, binaries and owner.
pub(super) struct Server {
    pub(super) pgdata: std::path::PathBuf,
    pub(super) binaries: Binaries,
    pub(super) owner: User,
}

/// The command that starts the restored server by hand.
pub(super) fn command_line(server: &Server) -> String {
    let pg_ctl = server.binaries.program("pg_ctl");
    let base = format!(
        "{} -D {} -l {} start",
        conf::shell_quote(&pg_ctl.to_string_lossy()),
        conf::shell_quote(&server.pgdata.to_string_lossy()),
        conf::shell_quote(&log_path(&server.pgdata).to_string_lossy())
    );
    if users::effective_uid() == server.owner.uid {
        base
    } else {
        format!("runuser -u {} -- {base}", server.owner.name)
    }
}

/// Starts the server and waits: a standby until it accepts connections; any other
/// recovery until it ends (promoted, paused at its target, or shut down as asked).
pub(super) async fn start(
    server: &Server,
    plan: &RestorePlan,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    let log = log_path(&server.pgdata);
    let log_dir = log.parent().expect("a file in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(log_dir)
        .map_err(|e| Error::local(log_dir, "cannot create", e))?;
    chown_tree(log_dir, &server.owner)?;
    let stale = PidFile::read(&server.pgdata).ok().flatten().map(|p| p.pid);
    if stale.is_some() {
        wait_for_old_server(server, log.as_path(), cancellation).await?;
    }
    let since = unix_now();
    let pg_ctl = server.binaries.program("pg_ctl");
    let output = pg_server::command_as(&pg_ctl, &server.owner)
        .arg("-D")
        .arg(&server.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"])
        .current_dir(&server.pgdata)
        .output()
        .map_err(|e| Error::local(&pg_ctl, "cannot run", e))?;
    if !output.status.success() {
        return Err(failure(&log, &String::from_utf8_lossy(&output.stderr)));
    }
    settle(server, plan, &log, since, stale, cancellation).await
}

/// How long a killed server's processes may take to go before a start gives up.
const OLD_SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until no process of an earlier server holds the data directory: PostgreSQL
/// refuses to start while its old postmaster exists, even as a zombie, or while its
/// children keep the old shared memory attached.
async fn wait_for_old_server(
    server: &Server,
    log: &Path,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let leftovers = pg_server::leftover_processes(&server.pgdata);
        if leftovers.is_empty() {
            return Ok(());
        }
        let pids = leftovers
            .iter()
            .map(|l| {
                if l.unreaped {
                    format!("{} (exited, not reaped by its parent)", l.pid)
                } else {
                    l.pid.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        if !told {
            tracing::info!("waiting for the processes of the previous server to exit: {pids}");
            told = true;
        }
        if started.elapsed() > OLD_SERVER_TIMEOUT {
            return Err(Error::Server {
                detail: format!(
                    "processes of the previous server on {} have not exited after {} s ({pids}); PostgreSQL will not start while they exist",
                    server.pgdata.display(),
                    OLD_SERVER_TIMEOUT.as_secs()
                ),
                log: log.to_path_buf(),
            });
        }
        nap(Duration::from_millis(100), cancellation).await?;
    }
}

/// Waits for a started server as `start` does: a standby until it accepts connections;
/// any other recovery until it ends. Also for the server of an interrupted run of the
/// same command. `stale` is the process id of a `postmaster.pid` left by an earlier
/// server, never taken for the new one's.
pub(super) async fn settle(
    server: &Server,
    plan: &RestorePlan,
    log: &Path,
    since: u64,
    stale: Option<i32>,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    // A recovery to the end runs without hot standby: it accepts connections only once
    // promoted, however long the recovery takes.
    let limit = (!matches!(plan.recovery, Recovery::ToEnd)).then_some(START_TIMEOUT);
    let pid = wait_until_accepting(server, log, since, stale, limit, cancellation).await?;
    if plan.recovery.is_standby() {
        tracing::info!(
            "{} is running on port {} as a hot standby following the archive; `wale status {}` shows how far behind it is",
            server.pgdata.display(),
            pid.port,
            server.pgdata.display()
        );
    } else {
        wait_for_recovery_end(server, &pid, log, cancellation).await?;
    }
    if PidFile::read(&server.pgdata)
        .ok()
        .flatten()
        .is_some_and(|p| p.is_alive())
    {
        for line in running_it(server, plan.cluster.as_deref(), &pid) {
            tracing::info!("{line}");
        }
    }
    Ok(())
}

/// How to stop, restart, start at boot and connect to the running server, one line
/// each (the README's "Running it" says more): `pg_ctlcluster` and the
/// `postgresql@N-NAME` unit for a Debian cluster (`--cluster`), else `pg_ctl` as the
/// owner and a systemd unit of one's own.
pub(super) fn running_it(server: &Server, cluster: Option<&str>, pid: &PidFile) -> Vec<String> {
    let as_owner = |line: String| {
        if users::effective_uid() == server.owner.uid {
            line
        } else {
            format!("runuser -u {} -- {line}", server.owner.name)
        }
    };
    let quoted = |path: &Path| conf::shell_quote(&path.to_string_lossy());
    let socket = pid
        .socket_dir
        .as_deref()
        .map(|dir| format!(" -h {}", quoted(dir)))
        .unwrap_or_default();
    let connect = as_owner(format!(
        "{}{socket} -p {}",
        quoted(&server.binaries.program("psql")),
        pid.port
    ));
    if let Some(name) = cluster {
        let major = server.binaries.major;
        return vec![
            format!("stop:     pg_ctlcluster {major} {name} stop"),
            format!(
                "restart:  pg_ctlcluster {major} {name} restart (under systemd: stop it as above once, then systemctl start|restart postgresql@{major}-{name})"
            ),
            format!("at boot:  systemctl enable postgresql@{major}-{name}"),
            format!("connect:  {connect}"),
        ];
    }
    let pg_ctl = quoted(&server.binaries.program("pg_ctl"));
    let pgdata = quoted(&server.pgdata);
    vec![
        format!(
            "stop:     {}",
            as_owner(format!("{pg_ctl} -D {pgdata} -m fast stop"))
        ),
        format!(
            "restart:  {}",
            as_owner(format!(
                "{pg_ctl} -D {pgdata} -l {} -m fast restart",
                quoted(&log_path(&server.pgdata))
            ))
        ),
        format!(
            "at boot:  a systemd unit that runs pg_ctl as {} (README, \"Running it\")",
            server.owner.name
        ),
        format!("connect:  {connect}"),
    ]
}

/// Polls `postmaster.pid` until the server accepts connections; fails as soon as the
/// server exits or `restore_command` records a failure (a standby would retry it
/// forever, never becoming consistent).
async fn wait_until_accepting(
    server: &Server,
    log: &Path,
    since: u64,
    stale: Option<i32>,
    limit: Option<Duration>,
    cancellation: &Cancellation,
) -> Result<PidFile, Error> {
    let data_dir = crate::pg::datadir::DataDir::new(&server.pgdata);
    let state = data_dir.fetch_state();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut seen = false;
    loop {
        match PidFile::read(&server.pgdata) {
            Ok(Some(pid)) if Some(pid.pid) != stale && pid.is_alive() => {
                seen = true;
                if pid.status == "ready" || pid.status == "standby" {
                    return Ok(pid);
                }
            }
            _ if seen || started.elapsed() > Duration::from_secs(10) => {
                return Err(failure(log, "the server exited"));
            }
            _ => {}
        }
        if let Some(error) = state.last_error().filter(|e| e.unix_time >= since) {
            stop(server);
            return Err(Error::Server {
                detail: format!(
                    "restore_command fails before the server could become consistent, so it was stopped: {}",
                    error.text
                ),
                log: log.to_path_buf(),
            });
        }
        if limit.is_none() && seen && last_report.elapsed() > PROGRESS_EVERY {
            if let Some(segment) = newest_segment_in(&data_dir.wal_dir()) {
                tracing::info!("recovering: WAL in pg_wal up to {segment}");
            }
            last_report = Instant::now();
        }
        if limit.is_some_and(|limit| started.elapsed() > limit) {
            return Err(Error::Server {
                detail: format!(
                    "the server does not accept connections after {} s; it is still recovering (stop it with pg_ctl stop, or let it go on)",
                    START_TIMEOUT.as_secs()
                ),
                log: log.to_path_buf(),
            });
        }
        nap(Duration::from_millis(200), cancellation).await?;
    }
}

/// Waits for the end of a recovery that is not a standby: promoted, paused at its target,
/// or shut down at it; a server that dies instead is explained.
/// The newest segment in the WAL directory: how far the WAL that recovery reads has
/// come, while the server answers no query.
fn newest_segment_in(wal_dir: &Path) -> Option<String> {
    std::fs::read_dir(wal_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            crate::wal::SegmentName::parse(&name).map(|_| name)
        })
        .max()
}

async fn wait_for_recovery_end(
    server: &Server,
    pid: &PidFile,
    log: &Path,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    let connection = Connection::new(&server.binaries, &server.owner, pid)
        .ok_or_else(|| failure(log, "the server listens on no Unix socket"))?;
    let pause = Major::new(server.binaries.major)
        .map_err(|e| Error::Usage(e.to_string()))?
        .replay_paused_sql();
    let sql = format!(
        "select pg_is_in_recovery(), case when pg_is_in_recovery() then {pause} else false end, \
         case when pg_is_in_recovery() then pg_last_wal_replay_lsn() end"
    );
    let mut last_report = Instant::now();
    loop {
        if !PidFile::read(&server.pgdata)
            .ok()
            .flatten()
            .is_some_and(|p| p.is_alive())
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if pg_server::explain_startup_failure(&text).is_none()
                && text.contains("recovery stopping")
            {
                tracing::info!(
                    "recovery reached its target and the server shut down, as --target-action shutdown asks"
                );
                return Ok(());
            }
            return Err(failure(log, "the server stopped during recovery"));
        }
        if let Ok(rows) = connection.query(&sql)
            && let Some(row) = rows.first()
        {
            let field = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
            if field(0) == "f" {
                tracing::info!(
                    "{}: recovery finished and the server was promoted; it accepts writes on port {}",
                    server.pgdata.display(),
                    pid.port
                );
                return Ok(());
            }
            if field(1) == "t" {
                tracing::info!(
                    "{}: recovery paused at {} (its target): check the data, then `wale promote {}` ends recovery there",
                    server.pgdata.display(),
                    field(2),
                    server.pgdata.display()
                );
                return Ok(());
            }
            if last_report.elapsed() > PROGRESS_EVERY {
                tracing::info!("recovering: replayed up to {}", field(2));
                last_report = Instant::now();
            }
        }
        nap(Duration::from_millis(300), cancellation).await?;
    }
}

/// Sleeps `how_long`, or fails at once with [`Error::Interrupted`] when cancelled.
async fn nap(how_long: Duration, cancellation: &Cancellation) -> Result<(), Error> {
    tokio::select! {
        () = cancellation.cancelled() => Err(Error::Interrupted),
        () = tokio::time::sleep(how_long) => Ok(()),
    }
}

/// `pg_ctl stop -m fast`, as the owner; best effort.
pub(super) fn stop(server: &Server) {
    let _ = pg_server::command_as(&server.binaries.program("pg_ctl"), &server.owner)
        .arg("-D")
        .arg(&server.pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .output();
}

/// Stops the server and waits until none of its processes is left (for at most 30 s): a
/// postmaster interrupted so early that it has not written `postmaster.pid` yet is not
/// stopped by `pg_ctl` and would go on writing into the directory being removed.
pub(super) fn stop_completely(server: &Server) {
    let started = Instant::now();
    stop(server);
    while !pg_server::leftover_processes(&server.pgdata).is_empty()
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
        stop(server);
    }
}

/// A start that failed: the log's explanation, else `fallback`.
fn failure(log: &Path, fallback: &str) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let detail = pg_server::explain_startup_failure(&text)
        .unwrap_or_else(|| fallback.trim().replace('\n', " "));
    Error::Server {
        detail,
        log: log.to_path_buf(),
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
