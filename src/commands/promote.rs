//! `promote PGDATA [--force]`: the cutover. Refuses a standby that has not replayed
//! everything the archive holds (unless forced), promotes it with its own `pg_ctl`,
//! waits until it accepts writes, and takes `restore_command` out of the configuration
//! wale wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::PromoteArgs;
use crate::config::Config;
use crate::error::Error;
use crate::pg::conf;
use crate::pg::datadir::DataDir;
use crate::pg::server::{self, Binaries, Connection, PidFile};
use crate::standby::{self, Report};
use crate::users::User;

/// How long to wait for the promoted server to accept writes.
const WRITABLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `wale promote`.
pub async fn run(config: &Config, args: &PromoteArgs) -> Result<(), Error> {
    let pgdata = &args.pgdata;
    let report = standby::gather(config, pgdata, args.pg_bin.as_deref()).await?;
    check_promotable(&report, args)?;
    let data_dir = DataDir::new(pgdata);
    let major = data_dir
        .major()
        .map_err(|e| Error::Usage(e.to_string()))?
        .number();
    let running = PidFile::read(pgdata).ok().flatten();
    let binaries =
        Binaries::for_data_dir(major, args.pg_bin.as_deref(), &data_dir, running.as_ref())
            .map_err(|e| Error::Usage(e.to_string()))?;
    let owner = server::owner_of(pgdata).map_err(|e| Error::local(pgdata, "cannot inspect", e))?;
    if report.paused_at_target {
        resume_at_target(&binaries, &owner, pgdata, running.as_ref())?;
    } else {
        promote_with_pg_ctl(&binaries, &owner, pgdata)?;
    }
    let pid = PidFile::read(pgdata)
        .ok()
        .flatten()
        .ok_or_else(|| Error::Usage(format!("{}: the server stopped", pgdata.display())))?;
    let connection = Connection::new(&binaries, &owner, &pid)
        .ok_or_else(|| Error::Usage("the server listens on no Unix socket".to_string()))?;
    wait_writable(&connection, pgdata).await?;
    disable_restore_command(pgdata)?;
    if let Err(e) = connection.value("select pg_reload_conf()") {
        tracing::warn!("could not reload the configuration: {e}");
    }
    report_promoted(&connection, pgdata);
    Ok(())
}

/// Refuses what must not be promoted: no server, a server not in recovery, a standby
/// behind the archive (unless `--force`). A recovery paused at its target is promotable.
fn check_promotable(report: &Report, args: &PromoteArgs) -> Result<(), Error> {
    let pgdata = &args.pgdata;
    if !report.running {
        return Err(Error::Usage(format!(
            "{}: no server is running on it; start it first",
            pgdata.display()
        )));
    }
    if report.in_recovery != Some(true) {
        return Err(Error::Usage(format!(
            "{}: the server is not in recovery; nothing to promote",
            pgdata.display()
        )));
    }
    if report.paused_at_target {
        tracing::info!(
            "{}: paused at its recovery target ({}); ending recovery there",
            pgdata.display(),
            report.recovery_target.as_deref().unwrap_or_default()
        );
    } else if !report.caught_up {
        if !args.force {
            return Err(Error::Usage(format!(
                "{}: not caught up with the archive ({}); wait and check `wale status`, or pass --force to promote anyway and lose what the archive holds beyond this point",
                pgdata.display(),
                report.reason
            )));
        }
        tracing::warn!("promoting although not caught up: {}", report.reason);
    }
    if report.paused && !report.paused_at_target {
        tracing::warn!("replay is paused; promotion ends recovery at the paused position");
    }
    Ok(())
}

/// Resumes a recovery paused at its target, which ends it and promotes, in every
/// version (`pg_ctl promote` is not heard by a paused recovery before 14).
fn resume_at_target(
    binaries: &Binaries,
    owner: &User,
    pgdata: &Path,
    running: Option<&PidFile>,
) -> Result<(), Error> {
    let pid =
        running.ok_or_else(|| Error::Usage(format!("{}: the server stopped", pgdata.display())))?;
    let connection = Connection::new(binaries, owner, pid)
        .ok_or_else(|| Error::Usage("the server listens on no Unix socket".to_string()))?;
    connection
        .value("select pg_wal_replay_resume()")
        .map(|_| ())
        .map_err(|e| Error::Server {
            detail: e.to_string(),
            log: server::log_path(pgdata),
        })
}

/// Says what was done, on which timeline, and what is left to the operator.
fn report_promoted(connection: &Connection, pgdata: &Path) {
    // The checkpoint's timeline lags until the end-of-recovery checkpoint; the name of the
    // current WAL file does not.
    let timeline = connection
        .value("select pg_walfile_name(pg_current_wal_lsn())")
        .ok()
        .and_then(|name| u32::from_str_radix(name.get(..8)?, 16).ok());
    tracing::info!(
        "{} is promoted and accepts writes{}; restore_command is commented out",
        pgdata.display(),
        timeline.map_or(String::new(), |t| format!(" on timeline {t}"))
    );
    for follow_up in [
        "drop or move what lives in the vendor's temporary tablespace (it was restored beside the data directory), and point temp_tablespaces elsewhere",
        "take a fresh base backup of this server: the archive's backups belong to the old primary",
        "set up your own WAL archiving (archive_mode is off): never archive into the prefix you restored from",
        "review postgresql.conf and pg_hba.conf (wale wrote local-only access) before opening the server to clients",
    ] {
        println!("next: {follow_up}");
    }
}

/// `pg_ctl promote`, as the data directory's owner, waiting for it.
fn promote_with_pg_ctl(binaries: &Binaries, owner: &User, pgdata: &Path) -> Result<(), Error> {
    let output = server::command_as(&binaries.program("pg_ctl"), owner)
        .arg("-D")
        .arg(pgdata)
        .args(["-w", "-t", "120", "promote"])
        .output()
        .map_err(|e| Error::local(binaries.program("pg_ctl"), "cannot run", e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Server {
        detail: format!(
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .replace('\n', " ")
        ),
        log: server::log_path(pgdata),
    })
}

/// Waits until the server is out of recovery and can assign a transaction id.
async fn wait_writable(connection: &Connection, pgdata: &Path) -> Result<(), Error> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < WRITABLE_TIMEOUT {
        match connection.value("select pg_is_in_recovery()") {
            Ok(v) if v == "f" => match connection.value("select txid_current()") {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            },
            Ok(_) => last = "still in recovery".into(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Server {
        detail: format!(
            "not writable {} s after promotion: {last}",
            WRITABLE_TIMEOUT.as_secs()
        ),
        log: server::log_path(pgdata),
    })
}

/// Comments out `restore_command` in the `postgresql.conf` wale wrote: a promoted server
/// must not keep reading the old archive.
fn disable_restore_command(pgdata: &Path) -> Result<(), Error> {
    let path = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::local(&path, "cannot read", e))?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if conf::parse_line(line).is_some_and(|s| s.name == "restore_command") {
            out.push_str(
                "# wale promote: the server is a primary now; it no longer reads the archive\n#",
            );
        }
        out.push_str(line);
        out.push('\n');
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&path).map_err(|e| Error::local(&path, "cannot inspect", e))?;
    crate::durable::write_file(
        &path,
        out.as_bytes(),
        meta.permissions().mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
    .map_err(|e| Error::local(&path, "cannot write", e))
}
