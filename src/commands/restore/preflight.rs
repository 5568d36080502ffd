//! Preflight: everything `restore` checks before it writes anything.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{PlacedTablespace, Plan, absolute, default_tablespace_root, human_bytes};
use crate::backups::{self, Backup, SentinelDetail};
use crate::cli::RestoreArgs;
use crate::commands::Options;
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::pg::server::{self, Binaries, PidFile};
use crate::retry::with_retries;
use crate::storage::{Storage, Store};
use crate::tablespaces;
use crate::users::{self, User};
use crate::wal::{LONG_PAGE_HEADER_SIZE, LongPageHeader, SegmentName};

pub(super) async fn preflight(
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
    check_reachable(&pgdata, &owner)?;
    check_key_readable(&options.envdir_settings, &owner)?;
    match &options.envdir {
        Some(envdir) => check_envdir_readable(&absolute(envdir)?, &owner)?,
        None => {
            // wale writes the settings there; it never overwrites an envdir it did not
            // make in this run.
            let envdir = super::default_envdir(&pgdata);
            if envdir.exists() {
                return Err(Error::Usage(format!(
                    "{} already exists (left by an earlier restore?): remove it, or pass --envdir",
                    envdir.display()
                )));
            }
        }
    }

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
    let first_header =
        read_first_header(config, store, layout, &backup.name, &options.decoding).await?;
    check_wal_between(config, store, layout, &backup.name, &detail, &first_header).await?;
    let tablespaces = place_tablespaces(
        &pgdata,
        &detail,
        &args.tablespaces,
        store,
        layout,
        &backup.name,
    )?;
    let mut created_beside = Vec::new();
    let tablespace_root = default_tablespace_root(&pgdata);
    if !tablespace_root.exists()
        && tablespaces
            .iter()
            .any(|t| t.location.starts_with(&tablespace_root))
    {
        created_beside.push(tablespace_root);
    }
    if options.envdir.is_none() {
        created_beside.push(super::default_envdir(&pgdata));
    }
    Ok(Plan {
        created_beside,
        pgdata,
        backup: backup.name,
        binaries,
        owner,
        first_header,
        tablespaces,
        settings,
    })
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
pub(super) fn parse_settings(raw: &[String]) -> Result<Vec<(String, String)>, Error> {
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

pub(super) fn has_target(args: &RestoreArgs) -> bool {
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
    match backups::select(all, &parsed).into_iter().next() {
        Some(backup) => Ok(backup),
        None => match &parsed {
            backups::Query::Named(name) => Err(backups::missing_backup(store, layout, name).await),
            _ => Err(Error::NotFound(format!(
                "no complete backups found in {where_}"
            ))),
        },
    }
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
    decoding: &Decoding,
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
        let (decoding, object_url) = (decoding.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let mut decoder =
                decoding.decoder(BufReader::new(object.into_blocking_read()), &object_url)?;
            let mut header = [0u8; LONG_PAGE_HEADER_SIZE];
            decoder.read_exact(&mut header).map(|()| header)
        })
        .await?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Corrupt {
                url: url.clone(),
                reason: format!("cannot read its first page: {e}"),
            },
            _ => Error::from_read(&url, e),
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
            super::default_envdir(Path::new("PGDATA")).display()
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
}
