//! Restoring a base backup into a data directory: the pipeline `backup-fetch` and
//! `restore` share.
//!
//! Each tar partition streams GET → lzop decode → tar extraction straight into the target,
//! `pool_size` partitions at once; a broken connection resumes by range from the byte it
//! stopped at. Memory is bounded per stream (an lzop block, a read buffer, a copy buffer:
//! about 1 MiB), whatever the backup's size. Until the restore is complete the target
//! holds a marker file and no `global/pg_control`, so PostgreSQL cannot start on a partial
//! restore, and a rerun after a failure picks up where the failed one left the directory.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::archive::{self, Partition};
use crate::backups::{self, SentinelDetail};
use crate::config::{Config, RetryPolicy};
use crate::decode::Decoding;
use crate::error::Error;
use crate::extract::{self, Extractor};
use crate::layout::{BackupName, Layout};
use crate::pool::{Cancellation, for_each_bounded};
use crate::storage::{Storage, Store};
use crate::tablespaces::{self, Choices};
use crate::tar;
use crate::text::bytes_text;
use crate::text::counted;

/// Present in the target while a restore is under way or after one failed.
const MARKER: &str = ".wale-backup-fetch-incomplete";
/// Read-ahead for each partition's body.
const BODY_BUFFER: usize = 256 * 1024;

/// One restore of a chosen backup into a prepared target (see [`prepare_target`]): what
/// `backup-fetch`'s flags and `restore`'s plan both come down to.
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
    let layout = Layout::new(config.store.path_prefix());
    let backup = &request.backup;
    let detail = crate::retry::with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, &layout, backup)
    })
    .await?;
    let partitions = archive::partitions(store, &layout, backup, &config.retry).await?;
    let extractor = Arc::new(prepare_extraction(store, &layout, request, &detail)?);
    tracing::info!(
        "restoring {backup} into {}: {}, {} expanded",
        request.target.display(),
        counted(partitions.len() as u64, "partition", "partitions"),
        detail
            .expanded_size_bytes
            .map(bytes_text)
            .unwrap_or_else(|| "size unknown".into())
    );
    let work = Extraction {
        store,
        extractor: &extractor,
        decoding,
        retry: config.retry,
        cancellation: &request.cancellation,
    };
    extract_all(
        &work,
        &partitions,
        request.pool_size,
        detail.expanded_size_bytes,
    )
    .await?;
    let summary = finish_tree(&request.target, &extractor, detail.expanded_size_bytes).await?;
    log_summary(backup, &request.target, &summary, started);
    Ok(())
}

/// Before any member is written: the tablespaces placed as asked, the marker in the
/// target, and the extractor that writes into it.
fn prepare_extraction(
    store: &Store,
    layout: &Layout,
    request: &FetchRequest,
    detail: &SentinelDetail,
) -> Result<Extractor, Error> {
    let target = &request.target;
    let backup_tablespaces = tablespaces::from_spec(detail.spec.as_ref())
        .map_err(|e| Error::corrupt(store.url(&layout.sentinel_key(&request.backup)), e))?;
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
    write_marker(target, &request.backup)?;
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
    .map_err(|e| extract_error(&target.display().to_string(), e))
}

/// Every partition extracted, `pool_size` at once, under the progress bar; a full file
/// system says how much the backup needs.
async fn extract_all(
    work: &Extraction<'_>,
    partitions: &[Partition],
    pool_size: Option<u16>,
    expanded: Option<u64>,
) -> Result<(), Error> {
    let pool = archive::partition_pool_size(pool_size, partitions.len());
    let progress = Progress::start(work.extractor.clone(), partitions.len(), expanded);
    let result = restore_partitions(work, partitions, pool, &progress).await;
    progress.stop();
    result.map_err(|e| match expanded {
        Some(planned) => e.needing(planned),
        None => e,
    })
}

/// After every partition: the extraction finished, the layout fixed up, `pg_control`
/// written last (it makes the directory startable), the marker removed, all flushed.
async fn finish_tree(
    target: &Path,
    extractor: &Arc<Extractor>,
    expanded: Option<u64>,
) -> Result<extract::Summary, Error> {
    let place = target.display().to_string();
    let finisher = extractor.clone();
    let mut summary = tokio::task::spawn_blocking(move || finisher.finish())
        .await?
        .map_err(|e| extract_error(&place, e))?;
    finish_layout(target, &summary)?;
    if crate::users::effective_uid() == 0 {
        give_layout_to_owner(target)?;
    }
    if let Some(bytes) = extractor
        .write_pg_control()
        .map_err(|e| extract_error(&place, e))?
    {
        summary.files += 1;
        summary.bytes += bytes;
    }
    check_size(summary.bytes, expanded);
    std::fs::remove_file(target.join(MARKER))
        .map_err(|e| Error::local(target.join(MARKER), "cannot remove", e))?;
    sync_dir(target)?;
    Ok(summary)
}

/// One line saying what was restored, and how fast.
fn log_summary(backup: &BackupName, target: &Path, summary: &extract::Summary, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "restored {backup} into {}: {}, {}, {}, {}, {} in {seconds:.1} s ({:.0} MB/s)",
        target.display(),
        counted(summary.files, "file", "files"),
        counted(summary.directories, "directory", "directories"),
        counted(summary.symlinks, "symlink", "symlinks"),
        counted(summary.hard_links, "hard link", "hard links"),
        bytes_text(summary.bytes),
        summary.bytes as f64 / 1e6 / seconds.max(1e-9)
    );
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

/// What every partition's extraction shares.
struct Extraction<'a> {
    store: &'a Arc<Store>,
    extractor: &'a Arc<Extractor>,
    decoding: &'a Decoding,
    retry: RetryPolicy,
    cancellation: &'a Cancellation,
}

async fn restore_partitions(
    work: &Extraction<'_>,
    partitions: &[Partition],
    pool: usize,
    progress: &Progress,
) -> Result<(), Error> {
    // The first failure stops the others: the restore as a whole has failed.
    for_each_bounded(
        partitions.iter().cloned(),
        pool,
        work.cancellation,
        |partition| {
            let (store, extractor, done, decoding, cancellation, retry) = (
                work.store.clone(),
                work.extractor.clone(),
                progress.partitions_done.clone(),
                work.decoding.clone(),
                work.cancellation.clone(),
                work.retry,
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
    // Waiting for the store may be dropped when cancelled; the extraction below may not
    // (its thread would go on writing), so it watches the flag itself.
    let (url, body) = archive::open_partition(store, partition, retry, cancellation).await?;
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
    .map_err(|err| {
        // Stopped because the restore failed elsewhere or was interrupted: whatever this
        // partition's reader or extractor said about it is not the cause.
        if cancellation.is_cancelled() {
            Error::Interrupted
        } else {
            partition_error(&url, err)
        }
    })?;
    tracing::info!(
        "{}: {members} members, {} compressed, in {:.1} s",
        partition.file_name(),
        bytes_text(partition.size),
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
        extract::Error::Unsafe { member, reason } => Error::corrupt(
            place.to_string(),
            format!("unsafe member {member:?} refused: {reason}"),
        ),
        extract::Error::Tar(other) => Error::corrupt(place.to_string(), other.to_string()),
        extract::Error::Cancelled => Error::Interrupted,
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
            bytes_text(restored),
            bytes_text(planned)
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
}
