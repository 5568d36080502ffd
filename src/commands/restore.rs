//! `restore PGDATA [BACKUP_NAME|LATEST]`: from an archive to a server that starts.
//!
//! 1. Preflight, writing nothing: the backup, the target, free space, server binaries of
//!    the backup's major version, the WAL from the backup's start to its stop segment, and
//!    the first segment's page header (system identifier, segment size).
//! 2. Fetch with `backup-fetch`'s pipeline; tablespaces into real directories outside
//!    PGDATA, `pg_wal` a real directory.
//! 3. Validate what came back: `PG_VERSION`, `backup_label`, `pg_control` (known layout,
//!    CRC) against the binaries and the archive's WAL.
//! 4. Configuration: the vendor's `postgresql.auto.conf` neutralised, `postgresql.conf`,
//!    `pg_hba.conf`, `pg_ident.conf`, an envdir for `restore_command` outside PGDATA,
//!    the signal file and recovery target.
//! 5. `--start`: `pg_ctl start` as the owner, failures explained in one line.

use std::fmt::Write as _;
use std::io::{BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backups::{self, Backup, SentinelDetail};
use crate::cli::RestoreArgs;
use crate::commands::Options;
use crate::config::Config;
use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::lzop;
use crate::pg::conf::{self, Finding};
use crate::pg::control::ControlData;
use crate::pg::server::{self, Binaries, PidFile};
use crate::retry::with_retries;
use crate::storage::{Storage, Store};
use crate::tablespaces;
use crate::users::{self, User};
use crate::wal::{LONG_PAGE_HEADER_SIZE, LongPageHeader, SegmentName};

use super::backup_fetch::{self, FetchRequest};

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
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_action",
    "recovery_target_timeline",
    "data_directory",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "cluster_name",
];

/// How long `--start` waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything preflight learned, for the later steps.
struct Plan {
    pgdata: PathBuf,
    backup: BackupName,
    binaries: Binaries,
    owner: User,
    first_header: LongPageHeader,
    tablespaces: Vec<PlacedTablespace>,
    settings: Vec<(String, String)>,
}

/// A tablespace of the backup and the directory it is restored into.
struct PlacedTablespace {
    oid: String,
    source: PathBuf,
    location: PathBuf,
}

/// Runs `wale restore`.
pub async fn run(config: &Config, options: &Options, args: &RestoreArgs) -> Result<(), Error> {
    let store = Arc::new(Store::open(&config.store).await?);
    let layout = Layout::new(config.store.path_prefix());
    let plan = preflight(config, options, args, &store, &layout).await?;

    backup_fetch::prepare_target(&plan.pgdata, false)?;
    let request = FetchRequest {
        target: plan.pgdata.clone(),
        backup: plan.backup.clone(),
        pool_size: args.pool_size,
        blind_restore: false,
        restore_spec: None,
        mappings: plan
            .tablespaces
            .iter()
            .map(|t| (t.oid.clone(), t.location.clone()))
            .collect(),
        keep_wal_link: false,
    };
    backup_fetch::fetch(config, &store, options.lzop, &request).await?;

    let control = validate(&plan)?;
    check_settings(&plan.settings, &control)?;
    give_to_owner(&plan)?;
    report_tablespace_contents(&plan);
    configure(config, options, args, &plan, &control)?;
    give_to_owner(&plan)?;

    if args.start {
        start(&plan)?;
        tracing::info!(
            "{} is running on port {}{}; `wale status {}` shows how far it is behind the archive",
            plan.pgdata.display(),
            args.port,
            if args.standby {
                " as a hot standby following the archive"
            } else {
                ", recovering"
            },
            plan.pgdata.display()
        );
    } else {
        tracing::info!("restored; start it with: {}", start_command_line(&plan));
    }
    Ok(())
}

async fn preflight(
    config: &Config,
    options: &Options,
    args: &RestoreArgs,
    store: &Arc<Store>,
    layout: &Layout,
) -> Result<Plan, Error> {
    let pgdata = absolute(&args.pgdata)?;
    let owner = choose_owner(&args.owner)?;
    let settings = parse_settings(&args.settings)?;
    check_recovery_options(args)?;
    check_target_directory(&pgdata)?;
    let _ = options;

    let backup = choose_backup(config, store, layout, args).await?;
    let detail = with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, layout, &backup.name)
    })
    .await?;
    let major = read_major_version(config, store, layout, &backup.name).await?;
    let binaries =
        Binaries::find(major, args.pg_bin.as_deref()).map_err(|e| Error::Usage(e.to_string()))?;
    tracing::info!(
        "backup {} (PostgreSQL {major}); server binaries {} ({})",
        backup.name,
        binaries.dir.display(),
        binaries.version_line
    );
    check_free_space(&pgdata, detail.expanded_size_bytes)?;
    let first_header = read_first_header(config, store, layout, &backup.name, options.lzop).await?;
    check_wal_between(config, store, layout, &backup.name, &detail, &first_header).await?;
    let tablespaces = place_tablespaces(
        &pgdata,
        &detail,
        &args.tablespaces,
        store,
        layout,
        &backup.name,
    )?;
    Ok(Plan {
        pgdata,
        backup: backup.name,
        binaries,
        owner,
        first_header,
        tablespaces,
        settings,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let here = std::env::current_dir()
        .map_err(|e| Error::local(".", "cannot read the current directory", e))?;
    Ok(here.join(path))
}

/// Who will own the data directory: the `--owner` user when running as root (never root
/// itself), else whoever runs wale.
fn choose_owner(requested: &str) -> Result<User, Error> {
    let me = users::effective_uid();
    if me == 0 {
        let user = users::user_by_name(requested).ok_or_else(|| {
            Error::Usage(format!(
                "--owner {requested}: no such user on this machine (PostgreSQL cannot run as root; create the user or name another)"
            ))
        })?;
        if user.uid == 0 {
            return Err(Error::Usage(
                "--owner root: PostgreSQL refuses to run as root; name the user the server runs as (e.g. postgres)".into(),
            ));
        }
        return Ok(user);
    }
    let user = users::user_by_uid(me)
        .ok_or_else(|| Error::Usage(format!("user id {me} has no account name on this machine")))?;
    if requested != "postgres" && requested != user.name {
        return Err(Error::Usage(format!(
            "--owner {requested}: only root can restore for another user (you are {})",
            user.name
        )));
    }
    Ok(user)
}

/// `--set NAME=VALUE` pairs, names checked.
fn parse_settings(raw: &[String]) -> Result<Vec<(String, String)>, Error> {
    raw.iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("--set {pair:?}: expected NAME=VALUE")))?;
            let name = name.trim().to_ascii_lowercase();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            if !valid {
                return Err(Error::Usage(format!(
                    "--set {pair:?}: {name:?} is not a setting name"
                )));
            }
            Ok((name, value.trim().to_string()))
        })
        .collect()
}

fn check_recovery_options(args: &RestoreArgs) -> Result<(), Error> {
    let timeline = args.target_timeline.as_str();
    if !(timeline == "latest"
        || timeline == "current"
        || timeline.parse::<u32>().is_ok_and(|t| t > 0))
    {
        return Err(Error::Usage(format!(
            "--target-timeline {timeline:?}: expected latest, current or a timeline number"
        )));
    }
    if let Some(lsn) = &args.target_lsn
        && crate::wal::Lsn::parse(lsn).is_none()
    {
        return Err(Error::Usage(format!(
            "--target-lsn {lsn:?}: expected a WAL position such as 0/3000060"
        )));
    }
    if let Some(time) = &args.target_time
        && parse_timestamp(time).is_none()
    {
        return Err(Error::Usage(format!(
            "--target-time {time:?}: expected a time such as '2026-11-30 10:00:00+00'"
        )));
    }
    if args.standby && has_target(args) {
        return Err(Error::Usage(
            "--standby follows the archive without end; a recovery target (--target-*) makes no sense with it".into(),
        ));
    }
    if args.target_action.is_some() && !has_target(args) {
        return Err(Error::Usage(
            "--target-action needs a recovery target (--target-time, --target-lsn, --target-name, --target-xid or --target-immediate)".into(),
        ));
    }
    Ok(())
}

fn has_target(args: &RestoreArgs) -> bool {
    args.target_time.is_some()
        || args.target_lsn.is_some()
        || args.target_name.is_some()
        || args.target_xid.is_some()
        || args.target_immediate
}

/// The target must be absent or an empty directory, and no server may use it.
fn check_target_directory(pgdata: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::local(pgdata, "cannot inspect", e)),
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::Usage(format!(
                "{} exists and is not a directory",
                pgdata.display()
            )));
        }
        Ok(_) => {}
    }
    if let Some(pid) = PidFile::read(pgdata)
        .map_err(|e| Error::local(pgdata.join("postmaster.pid"), "cannot read", e))?
    {
        let state = if pid.is_alive() {
            format!("a server (pid {}) is running on it", pid.pid)
        } else {
            "it holds a stale postmaster.pid".to_string()
        };
        return Err(Error::Usage(format!(
            "{}: {state}; restore into an empty directory",
            pgdata.display()
        )));
    }
    let mut entries =
        std::fs::read_dir(pgdata).map_err(|e| Error::local(pgdata, "cannot read", e))?;
    if entries.next().is_some() {
        return Err(Error::Usage(format!(
            "{} is not empty: wale restore only writes into an empty or new directory",
            pgdata.display()
        )));
    }
    Ok(())
}

/// The named backup; or LATEST; or, with `--target-time` and no name, the newest backup
/// whose sentinel (written when it finished) is older than the target.
async fn choose_backup(
    config: &Config,
    store: &Store,
    layout: &Layout,
    args: &RestoreArgs,
) -> Result<Backup, Error> {
    let all = with_retries(&config.retry, "list backups", || {
        backups::list(store, layout)
    })
    .await?;
    let where_ = store.url(&layout.basebackups());
    if all.is_empty() {
        return Err(Error::NotFound(format!(
            "no complete backups found in {where_}"
        )));
    }
    let query = args.backup_name.as_deref().unwrap_or("LATEST");
    if query == "LATEST"
        && args.backup_name.is_none()
        && let Some(time) = args.target_time.as_deref()
    {
        let target = parse_timestamp(time).expect("checked before");
        return all
            .into_iter()
            .filter(|b| b.sentinel.modified < target)
            .max_by_key(|b| b.sentinel.modified)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no backup in {where_} finished before --target-time {time}"
                ))
            });
    }
    let parsed = backups::Query::parse(Some(query))?;
    backups::select(all, &parsed).into_iter().next().ok_or_else(|| {
        Error::NotFound(format!(
            "no complete backup named {query} in {where_} (a backup without its sentinel is incomplete)"
        ))
    })
}

async fn read_major_version(
    config: &Config,
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
) -> Result<u32, Error> {
    let key = layout.extended_version_key(backup);
    let text = with_retries(&config.retry, "read extended_version.txt", || async {
        let object = store.get(&key).await?;
        let url = object.url.clone();
        tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            object
                .into_blocking_read()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .map(|_| text)
        })
        .await?
        .map_err(|e| {
            Error::Storage(crate::storage::Error::Transient {
                url,
                detail: format!("reading failed: {e}"),
            })
        })
    })
    .await?;
    server::major_of_version_text(&text).ok_or_else(|| Error::Corrupt {
        url: store.url(&key),
        reason: format!("no PostgreSQL version in {:?}", text.trim()),
    })
}

/// Free space where PGDATA will be (its nearest existing ancestor) against the backup's
/// expanded size.
fn check_free_space(pgdata: &Path, expanded: Option<u64>) -> Result<(), Error> {
    let Some(needed) = expanded else {
        tracing::warn!("the sentinel records no expanded size; free space not checked");
        return Ok(());
    };
    let existing = pgdata
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let stat = rustix::fs::statvfs(existing)
        .map_err(|e| Error::local(existing, "cannot read free space", e.into()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        return Err(Error::Usage(format!(
            "{}: {} free, but the backup expands to {}",
            existing.display(),
            human_bytes(free),
            human_bytes(needed)
        )));
    }
    Ok(())
}

/// The long page header of the backup's start segment, which names the system
/// identifier and segment size of the cluster the archive's WAL belongs to.
async fn read_first_header(
    config: &Config,
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
    lzop_options: lzop::Options,
) -> Result<LongPageHeader, Error> {
    let name = backup.start_segment().to_string();
    let key = layout.wal_key(&name);
    let url = store.url(&key);
    let bytes = with_retries(&config.retry, "read the backup's first WAL segment", || async {
        let object = match store.get(&key).await {
            Err(crate::storage::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!(
                    "{url}: the WAL segment where backup {backup} starts is not in the archive, so the backup cannot be made consistent"
                )));
            }
            other => other?,
        };
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut decoder =
                lzop::Decoder::with_options(BufReader::new(object.into_blocking_read()), lzop_options);
            let mut header = [0u8; LONG_PAGE_HEADER_SIZE];
            decoder.read_exact(&mut header).map(|()| header)
        })
        .await?
        .map_err(|e| Error::Corrupt {
            url: url.clone(),
            reason: format!("cannot read its first page: {e}"),
        })
    })
    .await?;
    let header = LongPageHeader::parse(&bytes).map_err(|reason| Error::Corrupt {
        url: url.clone(),
        reason,
    })?;
    let size = u64::from(header.segment_size);
    if let Some(segment) = SegmentName::parse(&name)
        && crate::wal::is_valid_segment_size(size)
        && (header.page_address != segment.start_lsn(size) || header.timeline != segment.timeline)
    {
        return Err(Error::Corrupt {
            url,
            reason: format!(
                "its first page is for timeline {} at {}, not {name}: the object is another segment",
                header.timeline, header.page_address
            ),
        });
    }
    Ok(header)
}

/// Every segment from the backup's start through its stop segment must be in the archive:
/// one listing that starts at the start segment and ends past the stop segment.
async fn check_wal_between(
    config: &Config,
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
    detail: &SentinelDetail,
    header: &LongPageHeader,
) -> Result<(), Error> {
    let size = u64::from(header.segment_size);
    let start = SegmentName::parse(backup.start_segment()).ok_or_else(|| {
        Error::Usage(format!(
            "{backup}: the start segment is not a WAL segment name"
        ))
    })?;
    let Some(stop) = detail
        .wal_segment_backup_stop
        .as_deref()
        .and_then(SegmentName::parse)
    else {
        tracing::warn!(
            "the sentinel of {backup} names no stop segment; WAL presence checked from PostgreSQL's replay only"
        );
        return Ok(());
    };
    let prefix = layout.wal_dir();
    let mut after = format!("{prefix}{start}");
    let mut wanted = start;
    'pages: loop {
        let page = with_retries(&config.retry, "list WAL", || {
            store.list_after(&prefix, &after, 1000)
        })
        .await?;
        let Some(last) = page.last() else { break };
        after = last.key.clone();
        for object in &page {
            let name = object.key[prefix.len()..].strip_suffix(".lzo");
            let Some(found) = name.and_then(SegmentName::parse) else {
                continue;
            };
            if found.timeline != wanted.timeline {
                continue;
            }
            if found > wanted {
                break 'pages;
            }
            if found == wanted {
                if wanted == stop {
                    return Ok(());
                }
                wanted = wanted.next(size);
            }
        }
    }
    Err(Error::NotFound(format!(
        "{}: WAL segment {wanted} is missing; backup {backup} needs every segment from {start} to {stop} to become consistent",
        store.url(&layout.wal_key(&wanted.to_string()))
    )))
}

/// Where each tablespace goes: `--tablespace OID=PATH`, else a directory beside PGDATA
/// (`<PGDATA>_tablespaces/<OID>`), never the source machine's path. Each must be absent or
/// empty.
fn place_tablespaces(
    pgdata: &Path,
    detail: &SentinelDetail,
    mappings: &[String],
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
) -> Result<Vec<PlacedTablespace>, Error> {
    let mappings = mappings
        .iter()
        .map(|m| tablespaces::parse_mapping(m))
        .collect::<Result<Vec<_>, _>>()?;
    let in_backup =
        tablespaces::from_spec(detail.spec.as_ref()).map_err(|reason| Error::Corrupt {
            url: store.url(&layout.sentinel_key(backup)),
            reason,
        })?;
    for (oid, _) in &mappings {
        if !in_backup.iter().any(|t| &t.oid == oid) {
            return Err(Error::Usage(format!(
                "--tablespace {oid}=…: backup {backup} has no tablespace {oid} (it has: {})",
                in_backup
                    .iter()
                    .map(|t| t.oid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let default_root = default_tablespace_root(pgdata);
    let mut placed = Vec::new();
    for tablespace in in_backup {
        let location = mappings
            .iter()
            .find(|(oid, _)| oid == &tablespace.oid)
            .map(|(_, path)| path.clone())
            .unwrap_or_else(|| default_root.join(&tablespace.oid));
        let location = absolute(&location)?;
        if location.starts_with(pgdata) {
            return Err(Error::Usage(format!(
                "tablespace {} at {}: a tablespace must live outside the data directory",
                tablespace.oid,
                location.display()
            )));
        }
        if std::fs::read_dir(&location).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(Error::Usage(format!(
                "tablespace {} would go to {}, which is not empty (choose another with --tablespace {}=PATH)",
                tablespace.oid,
                location.display(),
                tablespace.oid
            )));
        }
        tracing::info!(
            "tablespace {} (at {} on the source) will be restored into {}",
            tablespace.oid,
            tablespace.location,
            location.display()
        );
        placed.push(PlacedTablespace {
            oid: tablespace.oid,
            source: PathBuf::from(tablespace.location),
            location,
        });
    }
    Ok(placed)
}

/// Where tablespaces go unless mapped: `<PGDATA>_tablespaces/`.
fn default_tablespace_root(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.as_os_str().to_os_string();
    name.push("_tablespaces");
    PathBuf::from(name)
}

/// Checks the restored tree against the binaries and the archive's WAL.
fn validate(plan: &Plan) -> Result<ControlData, Error> {
    let pgdata = &plan.pgdata;
    let place = |name: &str| pgdata.join(name).display().to_string();
    let version = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .map_err(|e| Error::local(pgdata.join("PG_VERSION"), "cannot read", e))?;
    let major = server::major_of_version_text(&version);
    if major != Some(plan.binaries.major) {
        return Err(Error::Corrupt {
            url: place("PG_VERSION"),
            reason: format!(
                "says {:?}, but the backup's server was PostgreSQL {}",
                version.trim(),
                plan.binaries.major
            ),
        });
    }
    if !pgdata.join("backup_label").is_file() {
        return Err(Error::Corrupt {
            url: place("backup_label"),
            reason: "missing: without it PostgreSQL cannot know where to start replay".into(),
        });
    }
    let bytes = std::fs::read(pgdata.join("global/pg_control"))
        .map_err(|e| Error::local(pgdata.join("global/pg_control"), "cannot read", e))?;
    let control = ControlData::parse(&bytes).map_err(|e| Error::Corrupt {
        url: place("global/pg_control"),
        reason: e.to_string(),
    })?;
    if control.major_version != plan.binaries.major {
        return Err(Error::Corrupt {
            url: place("global/pg_control"),
            reason: format!(
                "written by PostgreSQL {}, but PG_VERSION says {}",
                control.major_version, plan.binaries.major
            ),
        });
    }
    let header = &plan.first_header;
    if header.system_identifier != control.system_identifier {
        return Err(Error::Corrupt {
            url: place("global/pg_control"),
            reason: format!(
                "system identifier {} differs from the archive's WAL ({}): the WAL under this prefix belongs to another cluster",
                control.system_identifier, header.system_identifier
            ),
        });
    }
    if header.segment_size != control.segment_size {
        return Err(Error::Corrupt {
            url: place("global/pg_control"),
            reason: format!(
                "WAL segment size {} differs from the archive's WAL ({})",
                control.segment_size, header.segment_size
            ),
        });
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
fn report_tablespace_contents(plan: &Plan) {
    for tablespace in &plan.tablespaces {
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
fn give_to_owner(plan: &Plan) -> Result<(), Error> {
    if users::effective_uid() != 0 {
        return Ok(());
    }
    let mut roots = vec![plan.pgdata.clone(), default_tablespace_root(&plan.pgdata)];
    roots.extend(plan.tablespaces.iter().map(|t| t.location.clone()));
    if let Some(envdir) = plan_envdir(plan) {
        roots.push(envdir);
    }
    for root in roots {
        chown_tree(&root, &plan.owner)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, owner: &User) -> Result<(), Error> {
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

/// The envdir wale writes for `restore_command` when none was given: beside PGDATA,
/// never inside it (base backups of the new server would copy the secrets).
fn plan_envdir(plan: &Plan) -> Option<PathBuf> {
    let mut name = plan.pgdata.as_os_str().to_os_string();
    name.push(".wale-env");
    Some(PathBuf::from(name)).filter(|p| p.exists())
}

fn default_envdir(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.as_os_str().to_os_string();
    name.push(".wale-env");
    PathBuf::from(name)
}

/// Writes the configuration files, the envdir, the signal file.
fn configure(
    config: &Config,
    options: &Options,
    args: &RestoreArgs,
    plan: &Plan,
    control: &ControlData,
) -> Result<(), Error> {
    let _ = config;
    let pgdata = &plan.pgdata;
    let pkglibdir = plan.binaries.pkglibdir();
    let auto_path = pgdata.join("postgresql.auto.conf");
    if let Some(original) = crate::tablespaces::read_small_file(&auto_path)
        .map_err(|e| Error::local(&auto_path, "cannot read", e))?
    {
        let sanitised = conf::sanitise_auto_conf(&original, OWNED_SETTINGS, &|library| {
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
    }

    let envdir = match &options.envdir {
        Some(dir) => absolute(dir)?,
        None => {
            let dir = default_envdir(pgdata);
            write_envdir(&dir, &options.envdir_settings)?;
            tracing::info!(
                "the archive settings for restore_command are in {} (mode 0700, outside the data directory)",
                dir.display()
            );
            dir
        }
    };
    let restore_command = restore_command(&envdir, options)?;

    let text = postgresql_conf(args, plan, control, &restore_command);
    write_file(&pgdata.join("postgresql.conf"), &text, 0o600)?;
    write_file(&pgdata.join("pg_hba.conf"), &conf::local_only_hba(), 0o600)?;
    write_file(&pgdata.join("pg_ident.conf"), &conf::empty_ident(), 0o600)?;
    let signal = if args.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_file(&pgdata.join(signal), "", 0o600)?;
    if let Some(cluster) = &args.cluster {
        register_cluster(cluster, plan, &text)?;
    }
    Ok(())
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
    if options.lzop.allow_concatenated {
        words.push("--allow-concatenated-lzop".into());
    }
    words.push(r#"wal-fetch "%f" "%p""#.into());
    Ok(words.join(" "))
}

fn postgresql_conf(
    args: &RestoreArgs,
    plan: &Plan,
    control: &ControlData,
    restore_command: &str,
) -> String {
    let mut text = String::new();
    let now = crate::storage::civil_utc(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    let _ = writeln!(
        text,
        "# Written by wale restore at {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC from backup {}.",
        now.0, now.1, now.2, now.3, now.4, now.5, plan.backup
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
    line("port", args.port.to_string(), "");
    line("hot_standby", "on".into(), "");
    for (name, primary) in control.settings.named() {
        line(
            name,
            primary.to_string(),
            "the primary's value (pg_control); a hot standby needs at least this",
        );
    }
    line("wal_level", control.wal_level.to_string(), "the source's");
    line(
        "archive_mode",
        "off".into(),
        "a restored server must never write into the archive it reads",
    );
    line("restore_command", conf::quote(restore_command), "");
    line(
        "recovery_target_timeline",
        conf::quote(&args.target_timeline),
        "",
    );
    if let Some(time) = &args.target_time {
        line("recovery_target_time", conf::quote(time), "");
    }
    if let Some(lsn) = &args.target_lsn {
        line("recovery_target_lsn", conf::quote(lsn), "");
    }
    if let Some(name) = &args.target_name {
        line("recovery_target_name", conf::quote(name), "");
    }
    if let Some(xid) = &args.target_xid {
        line("recovery_target_xid", conf::quote(xid), "");
    }
    if args.target_immediate {
        line("recovery_target", conf::quote("immediate"), "");
    }
    if let Some(action) = &args.target_action {
        line("recovery_target_action", conf::quote(action), "");
    }
    if !plan.settings.is_empty() {
        text.push_str("\n# --set\n");
        for (name, value) in &plan.settings {
            let _ = writeln!(text, "{name} = {}", conf::quote(value));
        }
    }
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
        write_file(&dir.join(name), &format!("{value}\n"), 0o600)?;
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
fn register_cluster(cluster: &str, plan: &Plan, conf_text: &str) -> Result<(), Error> {
    let valid = !cluster.is_empty()
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !cluster.starts_with('.');
    if !valid {
        return Err(Error::Usage(format!(
            "--cluster {cluster:?}: not a cluster name"
        )));
    }
    let etc = PathBuf::from(format!("/etc/postgresql/{}/{cluster}", plan.binaries.major));
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
    let _ = writeln!(text, "\n# Debian cluster {}/{cluster}", plan.binaries.major);
    for (name, value) in [
        ("data_directory", pgdata.display().to_string()),
        ("hba_file", etc.join("pg_hba.conf").display().to_string()),
        (
            "ident_file",
            etc.join("pg_ident.conf").display().to_string(),
        ),
        (
            "external_pid_file",
            format!("/var/run/postgresql/{}-{cluster}.pid", plan.binaries.major),
        ),
        ("cluster_name", format!("{}/{cluster}", plan.binaries.major)),
    ] {
        let _ = writeln!(text, "{name} = {}", conf::quote(&value));
    }
    write_file(&etc.join("postgresql.conf"), &text, 0o644)?;
    write_file(&etc.join("pg_hba.conf"), &conf::local_only_hba(), 0o640)?;
    write_file(&etc.join("pg_ident.conf"), &conf::empty_ident(), 0o640)?;
    write_file(&etc.join("start.conf"), "manual\n", 0o644)?;
    chown_tree(&etc, &plan.owner)?;
    tracing::info!(
        "registered as cluster {}/{cluster} (configuration in {}; pg_lsclusters lists it)",
        plan.binaries.major,
        etc.display()
    );
    Ok(())
}

fn log_path(pgdata: &Path) -> PathBuf {
    pgdata.join("log/startup.log")
}

fn start_command_line(plan: &Plan) -> String {
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

/// Starts the server as its owner and waits until it accepts connections (a standby:
/// once it is consistent), or explains in one line why it did not start.
fn start(plan: &Plan) -> Result<(), Error> {
    let log = log_path(&plan.pgdata);
    let log_dir = log.parent().expect("a file in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(log_dir)
        .map_err(|e| Error::local(log_dir, "cannot create", e))?;
    chown_tree(log_dir, &plan.owner)?;
    let output = server::command_as(&plan.binaries.program("pg_ctl"), &plan.owner)
        .arg("-D")
        .arg(&plan.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string(), "start"])
        .current_dir(&plan.pgdata)
        .output()
        .map_err(|e| Error::local(plan.binaries.program("pg_ctl"), "cannot run", e))?;
    if output.status.success() {
        return Ok(());
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let detail = server::explain_startup_failure(&log_text).unwrap_or_else(|| {
        String::from_utf8_lossy(&output.stderr)
            .trim()
            .replace('\n', " ")
    });
    Err(Error::Server {
        detail,
        log: log.clone(),
    })
}

/// A time as `--target-time` accepts it, to compare with a sentinel's time: PostgreSQL's
/// `YYYY-MM-DD HH:MM:SS[.fff][+HH[:MM]|Z| UTC]` (no zone means UTC here).
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let rest = rest.strip_prefix([' ', 'T']).unwrap_or(rest);
    let (time, zone) = match rest.find(['+', '-', 'Z', ' ']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut hms = time.split(':');
    let hour: u32 = hms
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("0")
        .parse()
        .ok()?;
    let minute: u32 = hms.next().unwrap_or("0").parse().ok()?;
    let seconds: f64 = hms.next().unwrap_or("0").parse().ok()?;
    let zone = zone.trim();
    let offset_secs: i64 = match zone {
        "" | "Z" | "UTC" | "+00" | "-00" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let digits = zone.trim_start_matches(['+', '-']).replace(':', "");
            let (h, m) = match digits.len() {
                2 => (digits.parse::<i64>().ok()?, 0),
                4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + i64::from(hour) * 3600 + i64::from(minute) * 60 - offset_secs;
    let whole = secs as f64 + seconds;
    (whole >= 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(whole))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn human_bytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_parse_as_postgres_writes_them() {
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(
            epoch(parse_timestamp("1970-01-02 00:00:00").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("1970-01-02 01:00:00+01").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("1970-01-01T23:30:00-00:30").unwrap()),
            86400.0
        );
        assert_eq!(
            epoch(parse_timestamp("2026-11-30 10:00:00.5Z").unwrap()),
            1796032800.5
        );
        assert_eq!(epoch(parse_timestamp("2000-03-01").unwrap()), 951868800.0);
        for bad in [
            "",
            "yesterday",
            "2026-13-01 00:00:00",
            "2026-11-30 10:00:00+5",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
    }

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
