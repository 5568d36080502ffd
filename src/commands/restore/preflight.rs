//! Preflight: everything `restore` checks before it writes anything.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::plan::{BackupChoice, Envdir, RestorePlan, default_tablespace_root};
use super::{Checked, PlacedTablespace};
use crate::archive::{self, WalPages, Wanted};
use crate::backups::{self, Backup, SentinelDetail};
use crate::commands::Options;
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::pg::server::{self, Binaries, PidFile};
use crate::pg::version::Major;
use crate::retry::with_retries;
use crate::storage::{Storage, Store};
use crate::tablespaces;
use crate::text::bytes_text;
use crate::users::{self, User};
use crate::wal::{LongPageHeader, SegmentName};

/// Checks everything the plan needs of this machine and the archive before anything is
/// written.
pub(super) async fn preflight(
    config: &Config,
    options: &Options,
    plan: &RestorePlan,
    store: &Arc<Store>,
    layout: &Layout,
) -> Result<Checked, Error> {
    let pgdata = &plan.pgdata;
    let owner = choose_owner(&plan.owner)?;
    check_target_directory(pgdata)?;
    check_reachable(pgdata, &owner)?;
    check_key_readable(&plan.archive_settings, &owner)?;
    check_archive_readable(config, &owner)?;
    check_port(plan)?;
    check_envdir(&plan.envdir, &owner)?;

    let backup = choose_backup(config, store, layout, plan, &options.decoding).await?;
    let detail = with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, layout, &backup.name)
    })
    .await?;
    let major = read_major_version(config, store, layout, &backup.name).await?;
    Major::new(major).map_err(|e| {
        Error::Usage(format!(
            "{}: {e}",
            store.url(&layout.extended_version_key(&backup.name))
        ))
    })?;
    let binaries =
        Binaries::find(major, plan.pg_bin.as_deref()).map_err(|e| Error::Usage(e.to_string()))?;
    tracing::info!(
        "backup {} (PostgreSQL {major}); server binaries {} ({})",
        backup.name,
        binaries.dir.display(),
        binaries.version_line
    );
    check_free_space(pgdata, detail.expanded_size_bytes)?;
    let first_header =
        read_first_header(config, store, layout, &backup.name, &options.decoding).await?;
    check_wal_between(config, store, layout, &backup.name, &detail, &first_header).await?;
    let tablespaces = place_tablespaces(
        pgdata,
        &detail,
        &plan.tablespaces,
        store,
        layout,
        &backup.name,
    )?;
    Ok(Checked {
        created_beside: created_beside(plan, &tablespaces, major),
        backup: backup.name,
        binaries,
        owner,
        first_header,
        tablespaces,
    })
}

/// The envdir `restore_command` will read: one given must be readable by the owner;
/// else wale writes the settings beside PGDATA, and never overwrites an envdir it did not
/// make in this run.
fn check_envdir(envdir: &Envdir, owner: &User) -> Result<(), Error> {
    let envdir = match envdir {
        Envdir::Given(dir) => return check_envdir_readable(dir, owner),
        Envdir::Written(dir) => dir,
    };
    if envdir.exists() {
        return Err(Error::Usage(format!(
            "{} already exists (left by an earlier restore?): remove it, or pass --envdir",
            envdir.display()
        )));
    }
    Ok(())
}

/// What the restore will create outside PGDATA (and remove again on failure): the
/// default tablespace root, the default envdir, Debian's cluster configuration.
fn created_beside(
    plan: &RestorePlan,
    tablespaces: &[PlacedTablespace],
    major: u32,
) -> Vec<PathBuf> {
    let mut created = Vec::new();
    let tablespace_root = default_tablespace_root(&plan.pgdata);
    if !tablespace_root.exists()
        && tablespaces
            .iter()
            .any(|t| t.location.starts_with(&tablespace_root))
    {
        created.push(tablespace_root);
    }
    if let Envdir::Written(dir) = &plan.envdir {
        created.push(dir.clone());
    }
    if let Some(cluster) = &plan.cluster {
        created.push(PathBuf::from(format!("/etc/postgresql/{major}/{cluster}")));
    }
    created
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
        if let Some(cluster) = debian_cluster_at(pgdata) {
            return Err(Error::Usage(format!(
                "{} is Debian's cluster {cluster} (pg_lsclusters lists it): restore into another directory (with --cluster NAME to register it), or, if that cluster is empty and unused, remove it first with `pg_dropcluster --stop {}`",
                pgdata.display(),
                cluster.replace('/', " ")
            )));
        }
        return Err(Error::Usage(format!(
            "{} is not empty: wale restore only writes into an empty or new directory",
            pgdata.display()
        )));
    }
    Ok(())
}

/// The Debian cluster (`N/NAME`) whose configuration in `/etc/postgresql` names `pgdata`
/// as its data directory, e.g. `15/main` that installing `postgresql-15` creates.
fn debian_cluster_at(pgdata: &Path) -> Option<String> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    for version in versions.flatten() {
        let Ok(clusters) = std::fs::read_dir(version.path()) else {
            continue;
        };
        for cluster in clusters.flatten() {
            let conf = cluster.path().join("postgresql.conf");
            let Ok(text) = std::fs::read_to_string(&conf) else {
                continue;
            };
            let names_it = text
                .lines()
                .filter_map(crate::pg::conf::parse_line)
                .any(|s| s.name == "data_directory" && Path::new(&s.value) == pgdata);
            if names_it {
                return Some(format!(
                    "{}/{}",
                    version.file_name().to_string_lossy(),
                    cluster.file_name().to_string_lossy()
                ));
            }
        }
    }
    None
}

/// The named backup; or LATEST; or, with `--target-time` and no name, the newest backup
/// whose sentinel (written when it finished) is older than the target.
async fn choose_backup(
    config: &Config,
    store: &Store,
    layout: &Layout,
    plan: &RestorePlan,
    decoding: &Decoding,
) -> Result<Backup, Error> {
    let wanted = match &plan.backup {
        BackupChoice::StoppedBefore(time) => Wanted::StoppedBefore {
            time: &time.text,
            at: time.at,
            decoding,
        },
        BackupChoice::Query(query) => Wanted::Query(query.clone()),
    };
    archive::resolve_backup(config, store, layout, &wanted).await
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
        .map_err(|e| Error::from_read(&url, e))
    })
    .await?;
    server::major_of_version_text(&text).ok_or_else(|| {
        Error::corrupt(
            store.url(&key),
            format!("no PostgreSQL version in {:?}", text.trim()),
        )
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
            bytes_text(free),
            bytes_text(needed)
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
    decoding: &Decoding,
) -> Result<LongPageHeader, Error> {
    let segment = SegmentName::parse(backup.start_segment()).ok_or_else(|| {
        Error::Usage(format!(
            "{backup}: the start segment is not a WAL segment name"
        ))
    })?;
    match crate::archive::segment_header(config, store, layout, &segment, decoding).await {
        Err(Error::NotFound(_)) => Err(Error::NotFound(format!(
            "{}: the WAL segment where backup {backup} starts is not in the archive, so the backup cannot be made consistent",
            store.url(&layout.wal_key(&segment.to_string()))
        ))),
        other => other,
    }
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
    let mut listing = WalPages::new(config, store, layout, Some(&start));
    let mut wanted = start;
    'pages: while let Some(page) = listing.next_page().await? {
        for object in &page {
            let crate::wal::WalFileKind::Segment(found) = object.kind else {
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
    mappings: &[(String, PathBuf)],
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
) -> Result<Vec<PlacedTablespace>, Error> {
    let in_backup = tablespaces::from_spec(detail.spec.as_ref())
        .map_err(|e| Error::corrupt(store.url(&layout.sentinel_key(backup)), e))?;
    for (oid, _) in mappings {
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

/// The server runs as `owner`: the nearest existing ancestor of PGDATA must be
/// searchable by it (directories wale creates on the way are 0755), or it could not reach
/// its own data directory.
fn check_reachable(pgdata: &Path, owner: &User) -> Result<(), Error> {
    let Some(existing) = pgdata.ancestors().skip(1).find(|p| p.exists()) else {
        return Ok(());
    };
    if !owner_can(owner, &["-x", &existing.to_string_lossy()]) {
        return Err(Error::Usage(format!(
            "{}: user {} cannot enter it, so the server could not reach {}; restore elsewhere or let {} in (chmod o+x)",
            existing.display(),
            owner.name,
            pgdata.display(),
            owner.name
        )));
    }
    Ok(())
}

/// `restore_command` reads `--envdir` as the server's owner: refuse one it cannot read
/// now rather than leave a standby that can fetch nothing.
fn check_envdir_readable(envdir: &Path, owner: &User) -> Result<(), Error> {
    let dir = envdir.to_string_lossy();
    let mut readable = owner_can(owner, &["-r", &dir, "-a", "-x", &dir]);
    if readable && let Ok(entries) = std::fs::read_dir(envdir) {
        for entry in entries.flatten() {
            let file = entry.path().to_string_lossy().into_owned();
            readable &= owner_can(owner, &["-r", &file]);
        }
    }
    if !readable {
        return Err(Error::Usage(format!(
            "--envdir {dir}: user {} cannot read it, and the restored server runs restore_command as {}; make it readable to {} only (chown or chmod), or leave --envdir out and wale writes the settings into {}",
            owner.name,
            owner.name,
            owner.name,
            super::plan::default_envdir(Path::new("PGDATA")).display()
        )));
    }
    Ok(())
}

/// `restore_command` decrypts as the server's owner: a secret key file (or a GnuPG home)
/// it cannot read would leave a server that can restore nothing.
fn check_key_readable(settings: &[(String, String)], owner: &User) -> Result<(), Error> {
    for (name, value) in settings {
        let expr: &[&str] = match name.as_str() {
            "WALE_PGP_KEY_PATH" | "WALG_PGP_KEY_PATH" => &["-r", value],
            "GNUPGHOME" => &["-r", value, "-a", "-x", value],
            _ => continue,
        };
        if !owner_can(owner, expr) {
            return Err(Error::Usage(format!(
                "{name}={value}: user {} cannot read it, and the restored server runs restore_command as {}; make it readable to {} (chown or chmod)",
                owner.name, owner.name, owner.name
            )));
        }
    }
    Ok(())
}

/// A `file://` archive is read by `restore_command` as the server's owner: one it cannot
/// enter would leave a server that can restore nothing (and wale, run as root, would not
/// notice).
fn check_archive_readable(config: &Config, owner: &User) -> Result<(), Error> {
    let crate::config::StoreConfig::File(file) = &config.store else {
        return Ok(());
    };
    let root = Path::new("/").join(&file.path_prefix);
    let wal = root.join("wal_005");
    let mut places = vec![root.to_string_lossy().into_owned()];
    if wal.is_dir() {
        places.push(wal.to_string_lossy().into_owned());
    }
    for place in places {
        if !owner_can(owner, &["-r", &place, "-a", "-x", &place]) {
            return Err(Error::Usage(format!(
                "file://{place}: permission denied for user {}, who runs restore_command for the restored server; let {} read the archive (chmod or chown), or restore as another --owner",
                owner.name, owner.name
            )));
        }
    }
    Ok(())
}

/// `--start` needs the port free: a server already listening there would make the new
/// one fail after the whole restore.
fn check_port(plan: &RestorePlan) -> Result<(), Error> {
    let in_use = [
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ]
    .into_iter()
    .any(|ip| {
        std::net::TcpListener::bind((ip, plan.port))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    });
    if !in_use {
        return Ok(());
    }
    let line = format!(
        "port {} is in use on this machine (another PostgreSQL?); pass --port with a free one",
        plan.port
    );
    if plan.start {
        return Err(Error::Usage(line));
    }
    tracing::warn!("{line} before starting the restored server");
    Ok(())
}

/// Asks the kernel, as `owner`, whether `test EXPR` holds (exact, groups included).
fn owner_can(owner: &User, expr: &[&str]) -> bool {
    if users::effective_uid() == owner.uid {
        return true;
    }
    server::command_as(Path::new("/usr/bin/test"), owner)
        .args(expr)
        .status()
        .is_ok_and(|s| s.success())
}
