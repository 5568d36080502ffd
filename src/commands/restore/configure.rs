//! The configuration `restore` writes: the vendor's `postgresql.auto.conf` neutralised,
//! `postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`, the envdir, the signal file, and
//! optionally a Debian cluster.

use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::plan::{Envdir, Recovery, RestorePlan, TimelineTarget};
use super::{Checked, chown_tree};
use crate::commands::Options;
use crate::error::Error;
use crate::layout::BackupName;
use crate::pg::conf::{self, Finding};
use crate::pg::control::ControlData;
use crate::pg::version::{self, Major, RecoveryConfig};
use crate::stream::StreamDir;
use crate::wal::SegmentName;

/// The five settings, and every other name wale writes in `postgresql.conf`: a line for
/// any of them in `postgresql.auto.conf` would override wale's, so it is commented out.
const OWNED_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "hot_standby",
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "wal_level",
    "archive_mode",
    "restore_command",
    "primary_conninfo",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_action",
    "recovery_target_timeline",
    "logging_collector",
    "log_destination",
    "min_wal_size",
    "max_wal_size",
];

/// What `--cluster` adds to what wale writes: the Debian configuration directory names
/// the data directory and its files.
const CLUSTER_SETTINGS: &[&str] = &[
    "data_directory",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "cluster_name",
];

/// Writes the configuration files, the envdir, the signal file.
pub(super) fn configure(
    options: &Options,
    plan: &RestorePlan,
    checked: &Checked,
    control: &ControlData,
) -> Result<(), Error> {
    let pgdata = &plan.pgdata;
    neutralise_auto_conf(plan, checked)?;
    let envdir = envdir_of(plan)?;
    let restore_command = restore_command(envdir, options)?;
    let major = Major::new(control.major_version).map_err(|e| Error::Usage(e.to_string()))?;
    let mut recovery = recovery_settings(plan, major, &restore_command);
    let streamed = enable_wal_stream(plan, &checked.backup)?;
    // A recovery to the end of the archive through the stream runs as a standby, which
    // the stream (or `wal-fetch`, when the stream is down) promotes at the archive's end.
    let as_standby = plan.recovery.is_standby() || streamed.is_some();
    if let Some(conninfo) = streamed {
        recovery.push(("primary_conninfo", conninfo));
    }
    let mut text = postgresql_conf(plan, checked, control, major, as_standby);
    match major.recovery_config() {
        RecoveryConfig::SignalFiles => {
            append_settings(&mut text, &recovery);
            let signal = if as_standby {
                "standby.signal"
            } else {
                "recovery.signal"
            };
            write_file(&pgdata.join(signal), "", 0o600)?;
        }
        RecoveryConfig::RecoveryConf => write_recovery_conf(plan, major, &recovery, as_standby)?,
    }
    if !plan.settings.is_empty() {
        text.push_str("\n# --set\n");
        for (name, value) in &plan.settings {
            let _ = writeln!(text, "{name} = {}", conf::quote(value));
        }
    }
    write_file(&pgdata.join("pg_hba.conf"), &conf::local_only_hba(), 0o600)?;
    write_file(&pgdata.join("pg_ident.conf"), &conf::empty_ident(), 0o600)?;
    // Last: without postgresql.conf PostgreSQL refuses to start, so a restore interrupted
    // before this point can never be started by mistake.
    write_file(&pgdata.join("postgresql.conf"), &text, 0o600)?;
    if let Some(cluster) = &plan.cluster {
        register_cluster(cluster, plan, checked, &text)?;
    }
    Ok(())
}

/// The vendor's `postgresql.auto.conf` with what would stop or mislead this server
/// commented out (the original kept beside it).
fn neutralise_auto_conf(plan: &RestorePlan, checked: &Checked) -> Result<(), Error> {
    let pgdata = &plan.pgdata;
    let pkglibdir = checked.binaries.pkglibdir();
    let auto_path = pgdata.join("postgresql.auto.conf");
    let Some(original) = crate::durable::read_small_file(&auto_path)
        .map_err(|e| Error::local(&auto_path, "cannot read", e))?
    else {
        return Ok(());
    };
    let mut owned = OWNED_SETTINGS.to_vec();
    if plan.cluster.is_some() {
        owned.extend_from_slice(CLUSTER_SETTINGS);
    }
    let sanitised = conf::sanitise_auto_conf(&original, &owned, &|library| {
        conf::library_candidates(library, &pkglibdir)
            .iter()
            .any(|p| p.is_file())
    });
    write_file(
        &pgdata.join("postgresql.auto.conf.wale-original"),
        &original,
        0o600,
    )?;
    write_file(&auto_path, &sanitised.text, 0o600)?;
    report_findings(&sanitised.findings, &pkglibdir);
    Ok(())
}

/// The envdir `restore_command` reads: `--envdir` as given, else the settings in effect
/// written beside the data directory.
fn envdir_of(plan: &RestorePlan) -> Result<&Path, Error> {
    let dir = match &plan.envdir {
        Envdir::Given(dir) => return Ok(dir),
        Envdir::Written(dir) => dir,
    };
    write_envdir(dir, &plan.archive_settings)?;
    tracing::info!(
        "the archive settings for restore_command are in {} (mode 0700, outside the data directory)",
        dir.display()
    );
    Ok(dir)
}

/// PostgreSQL 10 and 11: the recovery settings in `recovery.conf`, with `standby_mode`.
fn write_recovery_conf(
    plan: &RestorePlan,
    major: Major,
    recovery: &[(&str, String)],
    as_standby: bool,
) -> Result<(), Error> {
    let mut text = format!(
        "# Written by wale restore: PostgreSQL {major} reads its recovery settings here and\n\
         # renames this file to recovery.done when recovery ends.\n"
    );
    if as_standby {
        append_settings(&mut text, &[("standby_mode", "on".to_string())]);
    }
    append_settings(&mut text, recovery);
    write_file(&plan.pgdata.join("recovery.conf"), &text, 0o600)
}

fn report_findings(findings: &[Finding], pkglibdir: &Path) {
    let mut placeholders = Vec::new();
    for finding in findings {
        match finding {
            Finding::Disabled { name, reason } => {
                tracing::warn!("postgresql.auto.conf: commented out {name}: {reason}");
            }
            Finding::LibrariesDropped { name, dropped } => tracing::warn!(
                "postgresql.auto.conf: {name} without {} (not installed in {})",
                dropped.join(", "),
                pkglibdir.display()
            ),
            Finding::VendorPlaceholder { name } => placeholders.push(name.as_str()),
        }
    }
    if !placeholders.is_empty() {
        tracing::info!(
            "postgresql.auto.conf: vendor settings kept (harmless placeholders): {}",
            placeholders.join(", ")
        );
    }
}

/// `<this wale> --envdir <dir> --terse wal-fetch "%f" "%p"`, paths absolute and quoted
/// for the shell.
fn restore_command(envdir: &Path, options: &Options) -> Result<String, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::local("/proc/self/exe", "cannot find this executable", e))?;
    let mut words = vec![
        conf::shell_quote(&exe.to_string_lossy()),
        "--envdir".to_string(),
        conf::shell_quote(&envdir.to_string_lossy()),
        "--terse".to_string(),
    ];
    if options.decoding.lzop.allow_concatenated {
        words.push("--allow-concatenated-lzop".into());
    }
    words.push(r#"wal-fetch "%f" "%p""#.into());
    Ok(words.join(" "))
}

/// For a standby, or a recovery to the end of the archive, with wale's WAL stream
/// ([`crate::stream`]): its directory (for the latter marked to promote at the archive's
/// end), and the `primary_conninfo` that points the walreceiver at it. None without it, or when the
/// socket's path would be too long for the kernel (the standby then takes WAL through
/// `restore_command` alone).
fn enable_wal_stream(plan: &RestorePlan, backup: &BackupName) -> Result<Option<String>, Error> {
    if !plan.wal_stream {
        return Ok(None);
    }
    let stream = StreamDir::of_data_dir(&plan.pgdata);
    if !stream.socket_path_fits() {
        tracing::warn!(
            "no WAL stream: its socket {} would be longer than the kernel allows; the standby takes WAL through restore_command alone",
            stream.socket().display()
        );
        return Ok(None);
    }
    stream
        .enable(!plan.recovery.is_standby(), timeline_goal(plan, backup))
        .map_err(|e| Error::local(stream.root(), "cannot create", e))?;
    Ok(Some(stream.conninfo()))
}

/// The newest timeline the restored server follows: none for `latest`; for `current`,
/// the backup's.
fn timeline_goal(plan: &RestorePlan, backup: &BackupName) -> Option<u32> {
    match plan.timeline {
        TimelineTarget::Latest => None,
        TimelineTarget::Current => SegmentName::parse(backup.start_segment()).map(|s| s.timeline),
        TimelineTarget::Number(timeline) => Some(timeline),
    }
}

/// How often a standby at the end of the archive runs `restore_command` for the next
/// segment: a segment is replayed within about this long of its archiving, for one
/// small request to the store per interval while nothing new comes.
const STANDBY_RETRY_INTERVAL: &str = "500ms";

/// The recovery settings of this restore: `restore_command`, the timeline, the target.
/// PostgreSQL 10 and 11 know no `current` (it is their default, so it is left out).
fn recovery_settings(
    plan: &RestorePlan,
    major: Major,
    restore_command: &str,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![("restore_command", restore_command.to_string())];
    let default_current = major.recovery_config() == RecoveryConfig::RecoveryConf;
    if !(default_current && plan.timeline == TimelineTarget::Current) {
        settings.push(("recovery_target_timeline", plan.timeline.to_string()));
    }
    if let Recovery::ToTarget { target, action } = &plan.recovery {
        settings.push(target.setting());
        if let Some(action) = action {
            settings.push(("recovery_target_action", action.as_str().to_string()));
        }
    }
    settings
}

/// Appends `name = 'value'` lines.
fn append_settings(text: &mut String, settings: &[(&str, String)]) {
    for (name, value) in settings {
        let _ = writeln!(text, "{name} = {}", conf::quote(value));
    }
}

fn postgresql_conf(
    plan: &RestorePlan,
    checked: &Checked,
    control: &ControlData,
    major: Major,
    as_standby: bool,
) -> String {
    let mut text = String::new();
    let now = crate::time::civil_utc(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    let _ = writeln!(
        text,
        "# Written by wale restore at {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC from backup {}.",
        now.0, now.1, now.2, now.3, now.4, now.5, checked.backup
    );
    text.push_str(
        "# WAL-E backups do not hold the source's postgresql.conf; this is what this server needs.\n\
         # postgresql.auto.conf is read after this file (its original is postgresql.auto.conf.wale-original).\n\n",
    );
    let mut line = |name: &str, value: String, why: &str| {
        let _ = if why.is_empty() {
            writeln!(text, "{name} = {value}")
        } else {
            writeln!(text, "{name} = {value}\t# {why}")
        };
    };
    line("listen_addresses", conf::quote("localhost"), "");
    line("port", plan.port.to_string(), "");
    if matches!(plan.recovery, Recovery::ToEnd) {
        line(
            "hot_standby",
            "off".into(),
            "a recovery to the end answers queries once promoted; replay is ~10% faster without hot standby's bookkeeping",
        );
    } else {
        line("hot_standby", "on".into(), "");
    }
    if as_standby {
        line(
            "wal_retrieve_retry_interval",
            conf::quote(STANDBY_RETRY_INTERVAL),
            "how soon a standby at the end of the archive asks again (PostgreSQL's default is 5 s)",
        );
    }
    for (name, primary) in control.settings.named() {
        if name == "max_wal_senders" && !major.checks_max_wal_senders() {
            continue;
        }
        line(
            name,
            primary.to_string(),
            "the primary's value (pg_control); a hot standby needs at least this",
        );
    }
    line("wal_level", control.wal_level.to_string(), "the source's");
    let (min_wal, max_wal) = version::wal_size_settings_mb(control.segment_size);
    let segment_why = format!(
        "at least two of the backup's {} MiB WAL segments",
        control.segment_size >> 20
    );
    line(
        "min_wal_size",
        conf::quote(&format!("{min_wal}MB")),
        &segment_why,
    );
    line(
        "max_wal_size",
        conf::quote(&format!("{max_wal}MB")),
        &segment_why,
    );
    line(
        "logging_collector",
        "off".into(),
        "the server's log is where pg_ctl -l puts it (log/postgresql.log)",
    );
    line("log_destination", conf::quote("stderr"), "");
    line(
        "archive_mode",
        "off".into(),
        "a restored server must never write into the archive it reads",
    );
    text
}

fn write_envdir(dir: &Path, settings: &[(String, String)]) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| Error::local(dir, "cannot create the envdir", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::local(dir, "cannot set the mode of", e))?;
    for (name, value) in settings {
        // An envdir holds one line per variable; newlines (an armored key) are written as
        // NULs, which envdir turns back into newlines (daemontools' convention).
        let line = value.replace('\n', "\0");
        write_file(&dir.join(name), &format!("{line}\n"), 0o600)?;
    }
    Ok(())
}

/// Writes a whole file durably (complete or absent), with `mode`.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    crate::durable::write_file(path, text.as_bytes(), mode, None)
        .map_err(|e| Error::local(path, "cannot write", e))
}

/// Registers the data directory as Debian cluster `N/NAME`, as `pg_restorecluster` does:
/// the configuration under `/etc/postgresql/N/NAME` pointing at the data directory.
/// The name was checked with the plan.
fn register_cluster(
    cluster: &str,
    plan: &RestorePlan,
    checked: &Checked,
    conf_text: &str,
) -> Result<(), Error> {
    let major = checked.binaries.major;
    let etc = PathBuf::from(format!("/etc/postgresql/{major}/{cluster}"));
    if !Path::new("/etc/postgresql-common").is_dir() {
        return Err(Error::Usage(
            "--cluster needs postgresql-common (/etc/postgresql-common is missing)".into(),
        ));
    }
    if etc.exists() {
        return Err(Error::Usage(format!(
            "--cluster {cluster}: {} already exists",
            etc.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&etc)
        .map_err(|e| Error::local(&etc, "cannot create", e))?;
    let pgdata = &plan.pgdata;
    let mut text = conf_text.to_string();
    let _ = writeln!(text, "\n# Debian cluster {}/{cluster}", major);
    for (name, value) in [
        ("data_directory", pgdata.display().to_string()),
        ("hba_file", etc.join("pg_hba.conf").display().to_string()),
        (
            "ident_file",
            etc.join("pg_ident.conf").display().to_string(),
        ),
        (
            "external_pid_file",
            format!("/var/run/postgresql/{}-{cluster}.pid", major),
        ),
        ("cluster_name", format!("{}/{cluster}", major)),
    ] {
        let _ = writeln!(text, "{name} = {}", conf::quote(&value));
    }
    write_file(&etc.join("postgresql.conf"), &text, 0o644)?;
    write_file(&etc.join("pg_hba.conf"), &conf::local_only_hba(), 0o640)?;
    write_file(&etc.join("pg_ident.conf"), &conf::empty_ident(), 0o640)?;
    write_file(&etc.join("start.conf"), "manual\n", 0o644)?;
    chown_tree(&etc, &checked.owner)?;
    tracing::info!(
        "registered as cluster {}/{cluster} (configuration in {}; pg_lsclusters lists it)",
        major,
        etc.display()
    );
    Ok(())
}
