//! `restore PGDATA [BACKUP_NAME|LATEST]`: from an archive to a server that starts.
//!
//! Read in this order, one file per step:
//!
//! 0. [`plan`]: the arguments checked and typed once ([`RestorePlan`]: recovery target,
//!    timeline, settings, paths); `main` makes it, every later step reads it.
//! 1. `preflight`, writing nothing: the backup, free space, server binaries of the
//!    backup's major version, the WAL from the backup's start to its stop segment, and the
//!    first segment's page header (system identifier, segment size).
//! 2. Fetch (here, [`run`]) with `backup-fetch`'s pipeline ([`crate::restore_tree`]);
//!    tablespaces into real directories outside PGDATA, `pg_wal` a real directory.
//! 3. Validate what came back (here): `PG_VERSION`, `backup_label`, `pg_control` (known
//!    layout, CRC) against the binaries and the archive's WAL.
//! 4. `configure`: the vendor's `postgresql.auto.conf` neutralised, `postgresql.conf`,
//!    `pg_hba.conf`, `pg_ident.conf`, an envdir for `restore_command` outside PGDATA,
//!    the signal file and recovery target.
//! 5. `start` (`--start`): `pg_ctl start` as the owner, failures explained in one line.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::commands::Options;
use crate::config::Config;
use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::pg::control::ControlData;
use crate::pg::datadir::{DataDir, RESTORE_RECORD, RestoreRecord};
use crate::pg::server::PidFile;
use crate::pg::server::{self, Binaries};
use crate::pool::Cancellation;
use crate::storage::Store;
use crate::users::{self, User};
use crate::wal::LongPageHeader;

use crate::restore_tree::{self, FetchRequest};

mod configure;
pub(super) mod plan;
mod preflight;
mod start;

use plan::RestorePlan;

/// Runs `wale restore` as `plan` says.
///
/// The first thing it writes into PGDATA is [`RESTORE_RECORD`], naming this restore (its
/// request) and what it may create; it is marked complete once the configuration is in
/// place, after `pg_control` (written last by the fetch) and `postgresql.conf` (written
/// last by the configuration), so PostgreSQL cannot start a half-made tree. Run again
/// after a kill, the same command recognises its work: unfinished, it is removed and
/// redone; complete, the command goes on from there (starts the server, or waits for the
/// one it started). SIGINT and SIGTERM stop the work and roll everything back.
pub async fn run(config: &Config, options: &Options, plan: &RestorePlan) -> Result<(), Error> {
    let cancellation = Cancellation::new();
    let _signals = crate::pool::cancel_on_signals(&cancellation);
    let pgdata = &plan.pgdata;
    if let Some(record) = DataDir::new(pgdata).restore_record()
        && let Some(complete) = earlier_restore(pgdata, record, &plan.request)?
    {
        return finish_earlier(plan, complete, &cancellation).await;
    }
    let store = Arc::new(Store::open(&config.store).await?);
    let layout = Layout::new(config.store.path_prefix());
    let checked = tokio::select! {
        biased;
        () = cancellation.cancelled() => {
            return Err(Error::Interrupted);
        }
        checked = preflight::preflight(config, options, plan, &store, &layout) => checked?,
    };

    // From here on wale writes. Until the restore is complete, a failure removes what
    // this run created, so the same command can simply be run again.
    let undo = Undo::record(plan, &checked);
    let restored = fetch_and_configure(
        config,
        options,
        plan,
        &store,
        &checked,
        &undo,
        &cancellation,
    )
    .await;
    if let Err(err) = restored {
        return Err(undo.roll_back(err));
    }
    let server = checked.server(pgdata);
    if !plan.start {
        tracing::info!("restored; start it with: {}", start::command_line(&server));
        return Ok(());
    }
    match start::start(&server, plan, &cancellation).await {
        Err(Error::Interrupted) => {
            start::stop_completely(&server);
            Err(undo.roll_back(Error::Interrupted))
        }
        other => other,
    }
}

/// A data directory holding a record of an earlier `wale restore`: of another request,
/// refused; unfinished, rolled back (so the restore starts afresh, `None`); complete,
/// returned for [`finish_earlier`].
fn earlier_restore(
    pgdata: &Path,
    record: RestoreRecord,
    request: &serde_json::Value,
) -> Result<Option<RestoreRecord>, Error> {
    if record.request != *request {
        return Err(Error::Usage(format!(
            "{} holds a {} restore of {} made by wale with other options; run that same command again to {}, or remove {} (and what it created beside it) to start over",
            pgdata.display(),
            if record.complete {
                "complete"
            } else {
                "unfinished"
            },
            record.backup,
            if record.complete {
                "use it"
            } else {
                "finish it"
            },
            pgdata.display()
        )));
    }
    if record.complete {
        return Ok(Some(record));
    }
    tracing::warn!(
        "{} holds an unfinished restore of {} by this same command (interrupted); removing it and restoring again",
        pgdata.display(),
        record.backup
    );
    Undo {
        places: record.places,
    }
    .remove_all();
    Ok(None)
}

/// The same command after a complete restore: without `--start`, nothing to do; with it,
/// the server is started, or the one an interrupted run started is waited for as the
/// run would have.
async fn finish_earlier(
    plan: &RestorePlan,
    record: RestoreRecord,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    let pgdata = &plan.pgdata;
    let binaries = Binaries::for_data_dir(
        record.major,
        plan.pg_bin.as_deref(),
        &DataDir::new(pgdata),
        None,
    )
    .map_err(|e| Error::Usage(e.to_string()))?;
    let owner = server::owner_of(pgdata).map_err(|e| Error::local(pgdata, "cannot inspect", e))?;
    let server = start::Server {
        pgdata: pgdata.to_path_buf(),
        binaries,
        owner,
    };
    let running = PidFile::read(pgdata)
        .ok()
        .flatten()
        .filter(PidFile::is_alive);
    match (plan.start, running) {
        (false, _) => {
            tracing::info!(
                "{} already holds this restore of {}, complete; start it with: {}",
                pgdata.display(),
                record.backup,
                start::command_line(&server)
            );
            Ok(())
        }
        (true, Some(pid)) => {
            tracing::info!(
                "{} already holds this restore of {}, and its server (pid {}) runs: waiting for it as the interrupted run would have",
                pgdata.display(),
                record.backup,
                pid.pid
            );
            start::settle(
                &server,
                plan,
                &server::log_path(pgdata),
                start::unix_now(),
                None,
                cancellation,
            )
            .await
        }
        (true, None) => {
            tracing::info!(
                "{} already holds this restore of {}, complete: starting it",
                pgdata.display(),
                record.backup
            );
            start::start(&server, plan, cancellation).await
        }
    }
}

/// Fetches the backup into the data directory and writes the configuration, between the
/// record of an unfinished restore and the record of a complete one.
async fn fetch_and_configure(
    config: &Config,
    options: &Options,
    plan: &RestorePlan,
    store: &Arc<Store>,
    checked: &Checked,
    undo: &Undo,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    if let Some(parent) = plan.pgdata.parent() {
        // Directories on the way are 0755, so the server's owner can pass through them.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| Error::local(parent, "cannot create", e))?;
    }
    restore_tree::prepare_target(&plan.pgdata, false)?;
    let mut record = RestoreRecord {
        backup: checked.backup.to_string(),
        major: checked.binaries.major,
        pg_bin: checked.binaries.dir.clone(),
        complete: false,
        request: plan.request.clone(),
        places: undo.places.clone(),
    };
    write_record(&plan.pgdata, &record)?;
    let fetch = FetchRequest {
        target: plan.pgdata.clone(),
        backup: checked.backup.clone(),
        pool_size: plan.pool_size,
        blind_restore: false,
        restore_spec: None,
        mappings: checked
            .tablespaces
            .iter()
            .map(|t| (t.oid.clone(), t.location.clone()))
            .collect(),
        keep_wal_link: false,
        cancellation: cancellation.clone(),
        reserved: vec![PathBuf::from(RESTORE_RECORD)],
    };
    restore_tree::fetch(config, store, &options.decoding, &fetch).await?;
    let interrupted = || {
        if cancellation.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };
    interrupted()?;
    let control = validate(&plan.pgdata, checked)?;
    check_settings(&plan.settings, &control)?;
    give_to_owner(plan, checked)?;
    report_tablespace_contents(checked);
    configure::configure(options, plan, checked, &control)?;
    give_to_owner(plan, checked)?;
    interrupted()?;
    record.complete = true;
    write_record(&plan.pgdata, &record)?;
    give_to_owner(plan, checked)
}

/// Writes the restore's record (durably, so that a restart after a crash sees it).
fn write_record(pgdata: &Path, record: &RestoreRecord) -> Result<(), Error> {
    DataDir::new(pgdata)
        .write_restore_record(record)
        .map_err(|e| Error::local(pgdata.join(RESTORE_RECORD), "cannot write", e))
}

/// What this run may create, noted before it writes: removed again if it fails before
/// the server is configured (preflight made sure each was absent or empty).
struct Undo {
    /// Directories this run creates, or empty ones it fills, with whether they existed.
    places: Vec<(PathBuf, bool)>,
}

impl Undo {
    fn record(plan: &RestorePlan, checked: &Checked) -> Undo {
        // PGDATA and each tablespace directory: absent or empty (preflight checked), so
        // emptying or removing them loses nothing.
        let mut places: Vec<(PathBuf, bool)> = std::iter::once(&plan.pgdata)
            .chain(checked.tablespaces.iter().map(|t| &t.location))
            .map(|p| (p.clone(), p.exists()))
            .collect();
        places.extend(checked.created_beside.iter().map(|p| (p.clone(), false)));
        Undo { places }
    }

    /// Removes what the restore wrote, and says so in one line; returns the error to end
    /// the command with.
    fn roll_back(self, err: Error) -> Error {
        let complete = self.remove_all();
        let what = if matches!(err, Error::Interrupted) {
            "interrupted"
        } else {
            "the restore failed before completion"
        };
        if complete {
            tracing::warn!(
                "{what}: removed everything this restore had written, so the same command can be run again"
            );
        } else {
            tracing::warn!(
                "{what}: could not remove everything this restore had written (see above); remove what is left by hand before running it again"
            );
        }
        match err {
            Error::Interrupted => Error::Interrupted,
            other => other,
        }
    }

    /// Removes the directories this restore created, empties those it filled; whether
    /// all of it went.
    fn remove_all(self) -> bool {
        let mut complete = true;
        for (path, existed) in self.places {
            let result = if existed {
                empty_directory(&path)
            } else {
                match std::fs::remove_dir_all(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            };
            match result {
                Ok(()) => tracing::debug!("removed what this restore wrote in {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    complete = false;
                    tracing::warn!("could not clean up {}: {e}", path.display());
                }
            }
        }
        complete
    }
}

/// Removes everything inside `dir`, keeping `dir` itself.
fn empty_directory(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Everything preflight learned about the archive and this machine, for the later steps
/// (what the arguments asked for is the [`RestorePlan`]).
pub(super) struct Checked {
    pub(super) backup: BackupName,
    pub(super) binaries: Binaries,
    pub(super) owner: User,
    pub(super) first_header: LongPageHeader,
    pub(super) tablespaces: Vec<PlacedTablespace>,
    /// Directories beside PGDATA that this run creates (the default tablespace root, the
    /// envdir): the run's to give to the owner, or to remove if it fails.
    pub(super) created_beside: Vec<PathBuf>,
}

impl Checked {
    /// The server restored into `pgdata`, for starting it.
    fn server(&self, pgdata: &Path) -> start::Server {
        start::Server {
            pgdata: pgdata.to_path_buf(),
            binaries: self.binaries.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// A tablespace of the backup and the directory it is restored into.
pub(super) struct PlacedTablespace {
    pub(super) oid: String,
    pub(super) source: PathBuf,
    pub(super) location: PathBuf,
}

/// Checks the restored tree against the binaries and the archive's WAL.
fn validate(pgdata: &Path, checked: &Checked) -> Result<ControlData, Error> {
    let place = |name: &str| pgdata.join(name).display().to_string();
    let version = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .map_err(|e| Error::local(pgdata.join("PG_VERSION"), "cannot read", e))?;
    let major = server::major_of_version_text(&version);
    if major != Some(checked.binaries.major) {
        return Err(Error::corrupt(
            place("PG_VERSION"),
            format!(
                "says {:?}, but the backup's server was PostgreSQL {}",
                version.trim(),
                checked.binaries.major
            ),
        ));
    }
    if !pgdata.join("backup_label").is_file() {
        return Err(Error::corrupt(
            place("backup_label"),
            "missing: without it PostgreSQL cannot know where to start replay",
        ));
    }
    let bytes = std::fs::read(pgdata.join("global/pg_control"))
        .map_err(|e| Error::local(pgdata.join("global/pg_control"), "cannot read", e))?;
    let control =
        ControlData::parse(&bytes).map_err(|e| Error::corrupt(place("global/pg_control"), e))?;
    let header = &checked.first_header;
    let mismatch = if control.major_version != checked.binaries.major {
        Some(format!(
            "written by PostgreSQL {}, but PG_VERSION says {}",
            control.major_version, checked.binaries.major
        ))
    } else if header.system_identifier != control.system_identifier {
        Some(format!(
            "system identifier {} differs from the archive's WAL ({}): the WAL under this prefix belongs to another cluster",
            control.system_identifier, header.system_identifier
        ))
    } else if header.segment_size != control.segment_size {
        Some(format!(
            "WAL segment size {} differs from the archive's WAL ({})",
            control.segment_size, header.segment_size
        ))
    } else {
        None
    };
    if let Some(reason) = mismatch {
        return Err(Error::corrupt(place("global/pg_control"), reason));
    }
    if header.magic != control.wal_page_magic {
        tracing::warn!(
            "the archive's WAL has page magic {:#06x}, PostgreSQL {} writes {:#06x}",
            header.magic,
            control.major_version,
            control.wal_page_magic
        );
    }
    let settings = control
        .settings
        .named()
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        "pg_control: PostgreSQL {}, system {}, {} MiB segments, wal_level {}, primary's {settings}",
        control.major_version,
        control.system_identifier,
        control.segment_size >> 20,
        control.wal_level
    );
    Ok(control)
}

/// A `--set` of one of the five hot-standby settings below the primary's value would stop
/// the server at start-up: refuse it now, with the reason.
fn check_settings(settings: &[(String, String)], control: &ControlData) -> Result<(), Error> {
    for (name, primary) in control.settings.named() {
        if let Some((_, value)) = settings.iter().rev().find(|(n, _)| n == name) {
            let number: i64 = value.parse().map_err(|_| {
                Error::Usage(format!("--set {name}={value}: expected a whole number"))
            })?;
            if number < i64::from(primary) {
                return Err(Error::Usage(format!(
                    "--set {name}={value}: the primary ran with {name} = {primary}, and a hot standby refuses to start with less"
                )));
            }
        }
    }
    Ok(())
}

/// Counts relation files in each restored tablespace: a tablespace meant for temporary
/// files (a vendor's `ephemeral`) that holds real tables needs a decision before cutover.
fn report_tablespace_contents(checked: &Checked) {
    for tablespace in &checked.tablespaces {
        let relations = count_relation_files(&tablespace.location);
        if relations > 0 {
            tracing::warn!(
                "tablespace {} (at {} on the source) holds {relations} relation files: tables or indexes, not only temporary files; they are restored into {}",
                tablespace.oid,
                tablespace.source.display(),
                tablespace.location.display()
            );
        }
    }
}

/// Files named by digits only (`16384`, `16384.1`, `16384_fsm` excluded): permanent or
/// unlogged relations; temporary ones are `t<backend>_<relfilenode>`.
fn count_relation_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => count_relation_files(&path),
                Ok(t) if t.is_file() => {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    usize::from(!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
                }
                _ => 0,
            }
        })
        .sum()
}

/// As root: the data directory, the tablespaces and what wale wrote belong to the owner.
fn give_to_owner(plan: &RestorePlan, checked: &Checked) -> Result<(), Error> {
    if users::effective_uid() != 0 {
        return Ok(());
    }
    // Only what this run made or filled: never a directory that was there before.
    let roots = std::iter::once(&plan.pgdata)
        .chain(checked.tablespaces.iter().map(|t| &t.location))
        .chain(&checked.created_beside);
    for root in roots {
        chown_tree(root, &checked.owner)?;
    }
    Ok(())
}

pub(super) fn chown_tree(path: &Path, owner: &User) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::local(path, "cannot inspect", e)),
    };
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
        .map_err(|e| Error::local(path, "cannot change the owner of", e))?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| Error::local(path, "cannot read", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::local(path, "cannot read", e))?;
            chown_tree(&entry.path(), owner)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plan::parse_settings;
    use super::*;

    #[test]
    fn settings_parse_and_are_checked_against_the_primary() {
        let settings =
            parse_settings(&["work_mem=64MB".into(), "Max_Connections = 400".into()]).unwrap();
        assert_eq!(settings[1], ("max_connections".into(), "400".into()));
        assert!(parse_settings(&["novalue".into()]).is_err());
        assert!(parse_settings(&["bad name=1".into()]).is_err());
        let control = ControlData::parse(&crate::pg::control::synthetic(500)).unwrap();
        let err = check_settings(&settings, &control).unwrap_err().to_string();
        assert!(
            err.contains("the primary ran with max_connections = 500"),
            "{err}"
        );
        assert!(check_settings(&[("max_connections".into(), "500".into())], &control).is_ok());
    }

    #[test]
    fn relation_files_are_told_from_temporary_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("PG_15_202209061/16384");
        std::fs::create_dir_all(&db).unwrap();
        for name in ["16385", "16385_fsm", "t3_16390", "16386.1", "16387"] {
            std::fs::write(db.join(name), "").unwrap();
        }
        assert_eq!(count_relation_files(dir.path()), 2);
    }
}
