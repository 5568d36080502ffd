//! `backup-fetch PG_CLUSTER_DIRECTORY BACKUP_NAME|LATEST`: restore a base backup.
//!
//! Each tar partition streams GET → lzop decode → tar extraction straight into the target,
//! `--pool-size` partitions at once; a broken connection resumes by range from the byte it
//! stopped at. Memory is bounded per stream (an lzop block, a read buffer, a copy buffer:
//! about 1 MiB), whatever the backup's size. Until the restore is complete the target
//! holds a marker file and no `global/pg_control`, so PostgreSQL cannot start on a partial
//! restore, and a rerun after a failure picks up where the failed one left the directory.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backups::{self, Query};
use crate::cli::BackupFetchArgs;
use crate::config::{Config, RetryPolicy};
use crate::decode::Decoding;
use crate::error::Error;
use crate::extract::{self, Extractor};
use crate::layout::{BackupName, Layout, partition_number};
use crate::pool::{Cancellation, for_each_bounded};
use crate::storage::{ResumingReader, Storage, Store};
use crate::tablespaces::{self, Choices};
use crate::tar;
use crate::text::counted;

/// Present in the target while a restore is under way or after one failed.
const MARKER: &str = ".wale-backup-fetch-incomplete";
/// Read-ahead for each partition's body.
const BODY_BUFFER: usize = 256 * 1024;

/// One partition object to restore.
#[derive(Debug, Clone)]
pub(super) struct Partition {
    number: u64,
    /// Its key.
    pub(super) key: String,
    /// Its size in the store.
    pub(super) size: u64,
}

impl Partition {
    /// `part_00000000.tar.lzo`.
    pub(super) fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

pub async fn run(
    config: &Config,
    decoding: &Decoding,
    args: &BackupFetchArgs,
) -> Result<(), Error> {
    // Flags are checked before anything is fetched.
    let mappings = args
        .tablespaces
        .iter()
        .map(|m| tablespaces::parse_mapping(m))
        .collect::<Result<Vec<_>, _>>()?;
    let target = &args.pg_cluster_directory;
    let created = !target.exists();
    prepare_target(target, args.overwrite)?;
    let chosen = async {
        let store = Arc::new(Store::open(&config.store).await?);
        let layout = Layout::new(config.store.path_prefix());
        let backup = choose_backup(&store, &layout, config, &args.backup_name).await?;
        Ok::<_, Error>((store, backup))
    }
    .await;
    let (store, backup) = match chosen {
        Ok(chosen) => chosen,
        Err(err) => {
            // Nothing was written yet: a directory this run created goes again.
            if created {
                let _ = std::fs::remove_dir(target);
            }
            return Err(err);
        }
    };
    let request = FetchRequest {
        target: args.pg_cluster_directory.clone(),
        backup,
        pool_size: args.pool_size,
        blind_restore: args.blind_restore,
        restore_spec: args.restore_spec.clone(),
        mappings,
        keep_wal_link: args.keep_wal_link,
        cancellation: Cancellation::new(),
        reserved: Vec::new(),
    };
    let _signals = crate::pool::cancel_on_signals(&request.cancellation);
    let fetched = fetch(config, &store, decoding, &request).await;
    if fetched.is_err() && created {
        // Refused before anything was written (e.g. missing tablespace links): the
        // directory this run created goes again. One that holds a partial restore is
        // not empty, so it stays, for the same command to complete.
        let _ = std::fs::remove_dir(target);
    }
    fetched
}

/// One restore of a chosen backup into a prepared target (see [`prepare_target`]).
pub struct FetchRequest {
    /// The data directory.
    pub target: PathBuf,
    /// The backup.
    pub backup: BackupName,
    /// Partitions at once (`None`: the default pool).
    pub pool_size: Option<u16>,
    /// `--blind-restore`.
    pub blind_restore: bool,
    /// `--restore-spec`.
    pub restore_spec: Option<String>,
    /// `--tablespace OID=PATH` mappings.
    pub mappings: Vec<(String, PathBuf)>,
    /// `--keep-wal-link`.
    pub keep_wal_link: bool,
    /// Raised by a failing partition or from outside (a signal): every partition stops.
    pub cancellation: Cancellation,
    /// Paths in the target that are the caller's own: no member may use them.
    pub reserved: Vec<PathBuf>,
}

/// Fetches the backup: GET → (decryption) → lzop → tar → extraction for every partition,
/// then the layout fix-ups, `pg_control` last, everything flushed.
pub async fn fetch(
    config: &Config,
    store: &Arc<Store>,
    decoding: &Decoding,
    request: &FetchRequest,
) -> Result<(), Error> {
    let started = Instant::now();
    let (target, backup) = (&request.target, &request.backup);
    let layout = Layout::new(config.store.path_prefix());
    let detail = crate::retry::with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, &layout, backup)
    })
    .await?;
    let partitions = list_partitions(store, &layout, backup, &config.retry).await?;

    let backup_tablespaces =
        tablespaces::from_spec(detail.spec.as_ref()).map_err(|reason| Error::Corrupt {
            url: store.url(&layout.sentinel_key(backup)),
            reason,
        })?;
    let choices = Choices {
        blind: request.blind_restore,
        restore_spec: request
            .restore_spec
            .as_deref()
            .map(|arg| tablespaces::load_restore_spec(arg, detail.spec.as_ref()))
            .transpose()?,
        mappings: request.mappings.clone(),
    };
    let trusted_links = tablespaces::prepare(target, &backup_tablespaces, &choices)?;

    write_marker(target, backup)?;
    let extractor = Arc::new(
        Extractor::new(
            target,
            extract::Options {
                set_owner: crate::users::effective_uid() == 0,
                keep_wal_link: request.keep_wal_link,
                trusted_links,
                reserved: std::iter::once(PathBuf::from(MARKER))
                    .chain(request.reserved.iter().cloned())
                    .collect(),
                cancellation: request.cancellation.clone(),
            },
        )
        .map_err(|e| extract_error(&target.display().to_string(), e))?,
    );
    tracing::info!(
        "restoring {backup} into {}: {}, {} expanded",
        target.display(),
        counted(partitions.len() as u64, "partition", "partitions"),
        detail
            .expanded_size_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "size unknown".into())
    );
    let pool = pool_size(request.pool_size, partitions.len());
    let progress = Progress::start(
        extractor.clone(),
        partitions.len(),
        detail.expanded_size_bytes,
    );
    let result = restore_partitions(
        store,
        &extractor,
        &partitions,
        pool,
        decoding,
        config.retry,
        &progress,
        &request.cancellation,
    )
    .await;
    progress.stop();
    result.map_err(|e| match detail.expanded_size_bytes {
        Some(planned) => e.needing(planned),
        None => e,
    })?;

    let place = target.display().to_string();
    let finisher = extractor.clone();
    let mut summary = tokio::task::spawn_blocking(move || finisher.finish())
        .await?
        .map_err(|e| extract_error(&place, e))?;
    finish_layout(target, &summary)?;
    if crate::users::effective_uid() == 0 {
        give_layout_to_owner(target)?;
    }
    // Last: pg_control makes the directory startable, then the marker goes.
    if let Some(bytes) = extractor
        .write_pg_control()
        .map_err(|e| extract_error(&place, e))?
    {
        summary.files += 1;
        summary.bytes += bytes;
    }
    check_size(summary.bytes, detail.expanded_size_bytes);
    std::fs::remove_file(target.join(MARKER))
        .map_err(|e| Error::local(target.join(MARKER), "cannot remove", e))?;
    sync_dir(target)?;

    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "restored {backup} into {}: {}, {}, {}, {}, {} in {seconds:.1} s ({:.0} MB/s)",
        target.display(),
        counted(summary.files, "file", "files"),
        counted(summary.directories, "directory", "directories"),
        counted(summary.symlinks, "symlink", "symlinks"),
        counted(summary.hard_links, "hard link", "hard links"),
        human_bytes(summary.bytes),
        summary.bytes as f64 / 1e6 / seconds.max(1e-9)
    );
    Ok(())
}

/// Creates the target if needed (0700) and refuses a live or non-empty one.
pub fn prepare_target(target: &Path, overwrite: bool) -> Result<(), Error> {
    if target.join("postmaster.pid").exists() {
        return Err(Error::Usage(format!(
            "{} holds postmaster.pid: attempting to overwrite a live data directory",
            target.display()
        )));
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target)
        .map_err(|e| Error::local(target, "cannot create the data directory", e))?;
    let mut entries =
        std::fs::read_dir(target).map_err(|e| Error::local(target, "cannot read", e))?;
    let resuming = std::fs::symlink_metadata(target.join(MARKER)).is_ok_and(|m| m.is_file());
    if !overwrite && !resuming && entries.next().is_some() {
        return Err(Error::Usage(format!(
            "{} is not empty: restore into an empty directory, or pass --overwrite to replace the files the backup holds",
            target.display()
        )));
    }
    if resuming {
        tracing::warn!(
            "{} holds an earlier, unfinished restore; restoring over it",
            target.display()
        );
    }
    Ok(())
}

/// Marks the target as holding an unfinished restore, never writing through a link.
fn write_marker(target: &Path, backup: &BackupName) -> Result<(), Error> {
    let path = target.join(MARKER);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::Usage(format!("{} is a directory", path.display())));
        }
        Ok(_) => {
            std::fs::remove_file(&path).map_err(|e| Error::local(&path, "cannot remove", e))?
        }
        Err(_) => {}
    }
    let mut file = crate::durable::create_new_nofollow(&path)
        .map_err(|e| Error::local(&path, "cannot create", e))?;
    file.write_all(format!("{backup}\n").as_bytes())
        .map_err(|e| Error::local(&path, "cannot write", e))
}

async fn choose_backup(
    store: &Store,
    layout: &Layout,
    config: &Config,
    query: &str,
) -> Result<BackupName, Error> {
    let query = Query::parse(Some(query))?;
    let all = crate::retry::with_retries(&config.retry, "list backups", || {
        backups::list(store, layout)
    })
    .await?;
    let none_at_all = all.is_empty();
    match backups::select(all, &query).into_iter().next() {
        Some(backup) => Ok(backup.name),
        None if none_at_all => Err(Error::NotFound(format!(
            "no complete backups found in {}",
            store.url(&layout.basebackups())
        ))),
        None => match &query {
            Query::Named(name) => Err(backups::missing_backup(store, layout, name).await),
            _ => Err(Error::NotFound(format!(
                "no complete backups found in {}",
                store.url(&layout.basebackups())
            ))),
        },
    }
}

/// Lists the partitions in numeric order and checks none is missing (WAL-E numbers them
/// from 0 without gaps but records no count).
pub(super) async fn list_partitions(
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
    retry: &RetryPolicy,
) -> Result<Vec<Partition>, Error> {
    let prefix = layout.tar_partitions(backup);
    let listing =
        crate::retry::with_retries(retry, "list partitions", || store.list(&prefix, Some("/")))
            .await?;
    let mut partitions = Vec::new();
    for object in listing.objects {
        let file_name = object.key.rsplit('/').next().unwrap_or_default();
        match partition_number(file_name) {
            Some(number) => partitions.push(Partition {
                number,
                key: object.key,
                size: object.size,
            }),
            None => tracing::warn!(
                "unexpected key in the partition directory: {}",
                store.url(&object.key)
            ),
        }
    }
    partitions.sort_by_key(|p| p.number);
    if partitions.is_empty() {
        return Err(Error::Corrupt {
            url: store.url(&prefix),
            reason: "the backup has no tar partitions".into(),
        });
    }
    for (expected, partition) in partitions.iter().enumerate() {
        if partition.number != expected as u64 {
            return Err(Error::Corrupt {
                url: store.url(&prefix),
                reason: format!(
                    "partition {expected} is missing (found {} after {})",
                    partition.file_name(),
                    expected.saturating_sub(1)
                ),
            });
        }
    }
    Ok(partitions)
}

/// How many partitions to work on at once: as asked, else 4 or the number of CPUs if
/// larger (at most 16), never more than there are partitions.
pub(super) fn pool_size(requested: Option<u16>, partitions: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let wanted = requested.map_or(cpus.clamp(4, 16), usize::from);
    wanted.min(partitions).max(1)
}

async fn restore_partitions(
    store: &Arc<Store>,
    extractor: &Arc<Extractor>,
    partitions: &[Partition],
    pool: usize,
    decoding: &Decoding,
    retry: RetryPolicy,
    progress: &Progress,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    // The first failure stops the others: the restore as a whole has failed.
    for_each_bounded(
        partitions.iter().cloned(),
        pool,
        cancellation,
        |partition| {
            let (store, extractor, done, decoding, cancellation) = (
                store.clone(),
                extractor.clone(),
                progress.partitions_done.clone(),
                decoding.clone(),
                cancellation.clone(),
            );
            async move {
                let result = restore_partition(
                    &store,
                    &extractor,
                    &partition,
                    &decoding,
                    retry,
                    &cancellation,
                )
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                result
            }
        },
        |result| result,
    )
    .await
}

async fn restore_partition(
    store: &Arc<Store>,
    extractor: &Arc<Extractor>,
    partition: &Partition,
    decoding: &Decoding,
    retry: RetryPolicy,
    cancellation: &Cancellation,
) -> Result<(), Error> {
    let started = Instant::now();
    let what = format!("fetch {}", partition.file_name());
    // Waiting for the store may be dropped when cancelled; the extraction below may not
    // (its thread would go on writing), so it watches the flag itself.
    let first = tokio::select! {
        biased;
        () = cancellation.cancelled() => return Err(Error::Interrupted),
        first = crate::retry::with_retries(&retry, &what, || store.get(&partition.key)) => first?,
    };
    let url = first.url.clone();
    let body = cancellation.reader(ResumingReader::new(
        store.clone(),
        &partition.key,
        first,
        retry,
    ));
    let extractor = extractor.clone();
    let (decoding, object) = (decoding.clone(), url.clone());
    let members = tokio::task::spawn_blocking(move || {
        let decoder = decoding
            .decoder(BufReader::with_capacity(BODY_BUFFER, body), &object)
            .map_err(|e| extract::Error::Tar(tar::Error::Read(e)))?;
        let mut archive = tar::Archive::new(decoder);
        let members = extractor.extract(&mut archive)?;
        archive.read_to_end_of_stream()?;
        Ok(members)
    })
    .await?
    .map_err(|err| partition_error(&url, err))?;
    tracing::info!(
        "{}: {members} members, {} compressed, in {:.1} s",
        partition.file_name(),
        human_bytes(partition.size),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Names the layer that failed: the store (after resuming gave up), the lzop stream, the
/// tar stream, or the local file system.
fn partition_error(url: &str, err: extract::Error) -> Error {
    match err {
        extract::Error::Tar(tar::Error::Read(io)) => Error::from_read(url, io),
        other => extract_error(url, other),
    }
}

/// Extraction failures: local I/O keeps its path; bad or unsafe archive contents are
/// reported against `place` (the partition, or the target when finishing).
fn extract_error(place: &str, err: extract::Error) -> Error {
    match err {
        extract::Error::Io {
            path,
            action,
            source,
        } => Error::local(path, action, source),
        extract::Error::Unsafe { member, reason } => Error::Corrupt {
            url: place.to_string(),
            reason: format!("unsafe member {member:?} refused: {reason}"),
        },
        extract::Error::Tar(other) => Error::Corrupt {
            url: place.to_string(),
            reason: other.to_string(),
        },
        extract::Error::Cancelled => {
            Error::Internal(format!("{place}: {}", extract::Error::Cancelled))
        }
    }
}

/// After extraction: a WAL directory where there is none, `tablespace_map` agreeing with
/// the restored links, and a note of what was changed.
fn finish_layout(target: &Path, summary: &extract::Summary) -> Result<(), Error> {
    if let Some((name, old)) = &summary.replaced_wal_link {
        tracing::warn!(
            "{name} was a symlink to {old} on the source machine; restored an empty directory instead (backup-fetch --keep-wal-link would keep the link)"
        );
    }
    let present = |name: &str| std::fs::symlink_metadata(target.join(name)).is_ok();
    if !present("pg_wal") && !present("pg_xlog") {
        let name = match read_major_version(target) {
            Some(major) if major < 10 => "pg_xlog",
            _ => "pg_wal",
        };
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(target.join(name))
            .map_err(|e| Error::local(target.join(name), "cannot create", e))?;
        tracing::info!("the backup has no {name}; created an empty one");
    }
    if let Some(change) = tablespaces::fix_tablespace_map(target)? {
        tracing::info!("tablespace_map adjusted to this restore: {change}");
    }
    warn_of_in_place_tablespaces(target);
    Ok(())
}

/// A blind restore leaves a tablespace's files in a plain directory under `pg_tblspc/`,
/// which PostgreSQL 15 and later refuse at start-up unless told it is on purpose.
fn warn_of_in_place_tablespaces(target: &Path) {
    if read_major_version(target).is_none_or(|major| major < 15) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(target.join("pg_tblspc")) else {
        return;
    };
    let in_place: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !in_place.is_empty() {
        tracing::warn!(
            "pg_tblspc/{} restored as directories, not links: PostgreSQL 15 and later start only with allow_in_place_tablespaces = on in postgresql.conf (or restore with --tablespace OID=PATH to place them outside the data directory)",
            in_place.join(", pg_tblspc/")
        );
    }
}

/// As root: what wale made itself for the data directory (the directory, `pg_tblspc/`,
/// the tablespace links and the directories they point to, a new `pg_wal`) gets the owner
/// the archive gave `PG_VERSION` (else its root member), so the server's user can start
/// it. Archive members already carry their own owners.
fn give_layout_to_owner(target: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    // PG_VERSION's owner, else the one the archive's root member gave the directory.
    let Ok(owner) =
        std::fs::metadata(target.join("PG_VERSION")).or_else(|_| std::fs::metadata(target))
    else {
        return Ok(());
    };
    if owner.uid() == 0 {
        return Ok(());
    }
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| Error::local(path, "cannot change the owner of", e))
    };
    chown(target)?;
    for wal in ["pg_wal", "pg_xlog"] {
        let path = target.join(wal);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            chown(&path)?;
        }
    }
    let links = target.join("pg_tblspc");
    if let Ok(entries) = std::fs::read_dir(&links) {
        chown(&links)?;
        for entry in entries.flatten() {
            let link = entry.path();
            chown(&link)?;
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
                && let Ok(location) = std::fs::canonicalize(&link)
            {
                chown(&location)?;
            }
        }
    }
    Ok(())
}

/// WAL-E records no partition count, so a missing last partition would go unnoticed;
/// the sentinel's planned size catches it (files dropped during the backup explain a
/// small shortfall only).
fn check_size(restored: u64, planned: Option<u64>) {
    if let Some(planned) = planned
        && restored < planned - planned / 100
    {
        tracing::warn!(
            "restored {} of file data but the backup planned {}: a partition may be missing from the archive",
            human_bytes(restored),
            human_bytes(planned)
        );
    }
}

fn read_major_version(target: &Path) -> Option<u32> {
    let text = crate::durable::read_small_file(&target.join("PG_VERSION")).ok()??;
    text.trim().split('.').next()?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    crate::durable::sync_dir(dir).map_err(|e| Error::local(dir, "cannot sync", e))
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The progress bar (on a terminal only): partitions done, bytes, rate, ETA.
struct Progress {
    partitions_done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(extractor: Arc<Extractor>, partitions: usize, expected: Option<u64>) -> Progress {
        let partitions_done = Arc::new(AtomicU64::new(0));
        let done = partitions_done.clone();
        let task = tokio::spawn(async move {
            let bar = crate::progress::Bar::start(expected);
            loop {
                bar.set_position(extractor.bytes_written.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{}/{partitions} partitions",
                    done.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Progress {
            partitions_done,
            task,
        }
    }

    /// Removes the bar (dropping the task drops it).
    fn stop(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_empty_unless_resuming_or_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pgdata");
        prepare_target(&target, false).unwrap();
        std::fs::write(target.join("x"), "").unwrap();
        assert!(
            prepare_target(&target, false)
                .unwrap_err()
                .to_string()
                .contains("not empty")
        );
        prepare_target(&target, true).unwrap();
        std::fs::write(target.join(MARKER), "").unwrap();
        prepare_target(&target, false).unwrap();
        std::fs::write(target.join("postmaster.pid"), "").unwrap();
        assert!(
            prepare_target(&target, true)
                .unwrap_err()
                .to_string()
                .contains("live data directory")
        );
    }

    #[test]
    fn pool_sizes() {
        assert_eq!(pool_size(Some(8), 3), 3);
        assert_eq!(pool_size(Some(1), 3), 1);
        assert!(pool_size(None, 100) >= 4);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
