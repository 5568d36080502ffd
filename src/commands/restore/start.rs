//! `restore --start`: the server started as its owner, watched until it accepts
//! connections (a standby), or until its recovery ends (a point-in-time restore), with
//! start-up failures explained in one line.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::{Plan, chown_tree};
use crate::cli::RestoreArgs;
use crate::error::Error;
use crate::fetch_state::FetchState;
use crate::pg::conf;
use crate::pg::server::{self, Connection, PidFile};
use crate::pg::version::Major;
use crate::users;

/// How long to wait for a server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a long recovery reports its position.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

use server::log_path;

/// The command that starts the restored server by hand.
pub(super) fn command_line(plan: &Plan) -> String {
    let pg_ctl = plan.binaries.program("pg_ctl");
    let base = format!(
        "{} -D {} -l {} start",
        conf::shell_quote(&pg_ctl.to_string_lossy()),
        conf::shell_quote(&plan.pgdata.to_string_lossy()),
        conf::shell_quote(&log_path(&plan.pgdata).to_string_lossy())
    );
    if users::effective_uid() == plan.owner.uid {
        base
    } else {
        format!("runuser -u {} -- {base}", plan.owner.name)
    }
}

/// Starts the server and waits: a standby until it accepts connections; any other
/// recovery until it ends (promoted, paused at its target, or shut down as asked).
pub(super) fn start(plan: &Plan, args: &RestoreArgs) -> Result<(), Error> {
    let log = log_path(&plan.pgdata);
    let log_dir = log.parent().expect("a file in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(log_dir)
        .map_err(|e| Error::local(log_dir, "cannot create", e))?;
    chown_tree(log_dir, &plan.owner)?;
    let since = unix_now();
    let pg_ctl = plan.binaries.program("pg_ctl");
    let output = server::command_as(&pg_ctl, &plan.owner)
        .arg("-D")
        .arg(&plan.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"])
        .current_dir(&plan.pgdata)
        .output()
        .map_err(|e| Error::local(&pg_ctl, "cannot run", e))?;
    if !output.status.success() {
        return Err(failure(&log, &String::from_utf8_lossy(&output.stderr)));
    }
    let pid = wait_until_accepting(plan, &log, since)?;
    if args.standby {
        tracing::info!(
            "{} is running on port {} as a hot standby following the archive; `wale status {}` shows how far behind it is",
            plan.pgdata.display(),
            pid.port,
            plan.pgdata.display()
        );
        return Ok(());
    }
    wait_for_recovery_end(plan, &pid, &log)
}

/// Polls `postmaster.pid` until the server accepts connections; fails as soon as the
/// server exits or `restore_command` records a failure (a standby would retry it
/// forever, never becoming consistent).
fn wait_until_accepting(plan: &Plan, log: &Path, since: u64) -> Result<PidFile, Error> {
    let state = fetch_state(&plan.pgdata);
    let started = Instant::now();
    let mut seen = false;
    loop {
        match PidFile::read(&plan.pgdata) {
            Ok(Some(pid)) if pid.is_alive() => {
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
            stop(plan);
            return Err(Error::Server {
                detail: format!(
                    "restore_command fails before the server could become consistent, so it was stopped: {}",
                    error.text
                ),
                log: log.to_path_buf(),
            });
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(Error::Server {
                detail: format!(
                    "the server does not accept connections after {} s; it is still recovering (stop it with pg_ctl stop, or let it go on)",
                    START_TIMEOUT.as_secs()
                ),
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the end of a recovery that is not a standby: promoted, paused at its target,
/// or shut down at it; a server that dies instead is explained.
fn wait_for_recovery_end(plan: &Plan, pid: &PidFile, log: &Path) -> Result<(), Error> {
    let connection = Connection::new(&plan.binaries, &plan.owner, pid)
        .ok_or_else(|| failure(log, "the server listens on no Unix socket"))?;
    let pause = Major::new(plan.binaries.major)
        .map_err(|e| Error::Usage(e.to_string()))?
        .replay_paused_sql();
    let sql = format!(
        "select pg_is_in_recovery(), case when pg_is_in_recovery() then {pause} else false end, \
         case when pg_is_in_recovery() then pg_last_wal_replay_lsn() end"
    );
    let mut last_report = Instant::now();
    loop {
        if !PidFile::read(&plan.pgdata)
            .ok()
            .flatten()
            .is_some_and(|p| p.is_alive())
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if server::explain_startup_failure(&text).is_none()
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
                    plan.pgdata.display(),
                    pid.port
                );
                return Ok(());
            }
            if field(1) == "t" {
                tracing::info!(
                    "{}: recovery paused at {} (its target): check the data, then `wale promote {}` ends recovery there",
                    plan.pgdata.display(),
                    field(2),
                    plan.pgdata.display()
                );
                return Ok(());
            }
            if last_report.elapsed() > PROGRESS_EVERY {
                tracing::info!("recovering: replayed up to {}", field(2));
                last_report = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `pg_ctl stop -m fast`, as the owner; best effort.
fn stop(plan: &Plan) {
    let _ = server::command_as(&plan.binaries.program("pg_ctl"), &plan.owner)
        .arg("-D")
        .arg(&plan.pgdata)
        .args(["-m", "fast", "-w", "stop"])
        .output();
}

/// A start that failed: the log's explanation, else `fallback`.
fn failure(log: &Path, fallback: &str) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let detail = server::explain_startup_failure(&text)
        .unwrap_or_else(|| fallback.trim().replace('\n', " "));
    Error::Server {
        detail,
        log: log.to_path_buf(),
    }
}

fn fetch_state(pgdata: &Path) -> FetchState {
    let wal =
        std::fs::canonicalize(pgdata.join("pg_wal")).unwrap_or_else(|_| pgdata.join("pg_wal"));
    FetchState::for_wal_dir(&wal)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
