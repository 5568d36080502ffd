//! Questions about a WAL-E archive that take more than one object or more than a read:
//! which backup a command means (a name, `LATEST`, the newest before a time), a backup's
//! tar partitions and how to open one, the WAL directory page by page, the long page
//! header of a segment (which names the cluster and its segment size) and the oldest
//! segment the archive holds. Commands ask here rather than each reading the archive its
//! own way.

use std::io::{BufReader, Read};
use std::sync::Arc;

use crate::backups::{self, Backup, Query};
use crate::config::{Config, RetryPolicy};
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::{BackupName, Layout, partition_number};
use crate::pool::{CancellableRead, Cancellation};
use crate::retry::with_retries;
use crate::storage::{self, PageWalk, ResumingReader, Storage, Store};
use crate::wal::{LONG_PAGE_HEADER_SIZE, LongPageHeader, SegmentName, WalFileKind};

/// The long page header at the start of `segment`, checked to belong to that segment
/// (its address and timeline). A missing object is [`Error::NotFound`].
pub async fn segment_header(
    config: &Config,
    store: &Store,
    layout: &Layout,
    segment: &SegmentName,
    decoding: &Decoding,
) -> Result<LongPageHeader, Error> {
    let name = segment.to_string();
    let key = layout.wal_key(&name);
    let url = store.url(&key);
    let bytes = with_retries(&config.retry, "read a WAL segment's first page", || async {
        let object = match store.get(&key).await {
            Err(storage::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!("{url}: not in the archive")));
            }
            other => other?,
        };
        let (decoding, object_url) = (decoding.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let mut decoder =
                decoding.decoder(BufReader::new(object.into_blocking_read()), &object_url)?;
            let mut header = [0u8; LONG_PAGE_HEADER_SIZE];
            decoder.read_exact(&mut header).map(|()| header)
        })
        .await?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Error::corrupt(url.clone(), format!("cannot read its first page: {e}"))
            }
            _ => Error::from_read(&url, e),
        })
    })
    .await?;
    let header = LongPageHeader::parse(&bytes).map_err(|e| Error::corrupt(&url, e))?;
    let size = u64::from(header.segment_size);
    if crate::wal::is_valid_segment_size(size)
        && (header.page_address != segment.start_lsn(size) || header.timeline != segment.timeline)
    {
        return Err(Error::corrupt(
            url,
            format!(
                "its first page is for timeline {} at {}, not {name}: the object is another segment",
                header.timeline, header.page_address
            ),
        ));
    }
    Ok(header)
}

/// Whether the archive holds the history file of `timeline` (one HEAD, with retries):
/// how PostgreSQL, and wale after it, learn that a newer timeline exists.
pub async fn has_history(
    store: &Store,
    layout: &Layout,
    retry: &RetryPolicy,
    timeline: u32,
) -> Result<bool, Error> {
    let key = layout.wal_key(&crate::wal::history_file_name(timeline));
    match with_retries(retry, "look for a newer timeline", || store.head(&key)).await {
        Ok(_) => Ok(true),
        Err(storage::Error::NotFound { .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// The oldest WAL segment in the archive (lowest timeline, then position), if any.
pub async fn oldest_segment(
    config: &Config,
    store: &Store,
    layout: &Layout,
) -> Result<Option<SegmentName>, Error> {
    let mut listing = WalPages::new(config, store, layout, None);
    while let Some(page) = listing.next_page().await? {
        let first = page.iter().find_map(|object| match object.kind {
            WalFileKind::Segment(segment) => Some(segment),
            _ => None,
        });
        if first.is_some() {
            return Ok(first);
        }
    }
    Ok(None)
}

/// One object of the WAL directory, classified by its name (without `.lzo`).
#[derive(Debug, Clone)]
pub struct WalObject {
    /// Its key.
    pub key: String,
    /// What PostgreSQL file it holds (`Other` for anything not compressed WAL-E names).
    pub kind: WalFileKind,
}

/// `wal_005/` read a page at a time in key order, as the store pages (a remote store's
/// listing never whole in memory; a local directory's names, about 60 bytes each, held for
/// the walk: [`storage::PageWalk`]): the one way commands walk the WAL listing.
pub struct WalPages<'a> {
    retry: &'a RetryPolicy,
    store: &'a Store,
    walk: PageWalk,
    ended: bool,
}

impl<'a> WalPages<'a> {
    /// From the start of the directory, or from `from` on (its own object included).
    pub fn new(
        config: &'a Config,
        store: &'a Store,
        layout: &Layout,
        from: Option<&SegmentName>,
    ) -> WalPages<'a> {
        let prefix = layout.wal_dir();
        let after = match from {
            // The bare name sorts just before `<name>.lzo`.
            Some(segment) => format!("{prefix}{segment}"),
            None => prefix.clone(),
        };
        WalPages {
            retry: &config.retry,
            store,
            walk: store.walk(&prefix, &after, store.listing_page()),
            ended: false,
        }
    }

    /// The next page, or `None` at the end of the directory.
    pub async fn next_page(&mut self) -> Result<Option<Vec<WalObject>>, Error> {
        if self.ended {
            return Ok(None);
        }
        let (store, walk) = (self.store, &self.walk);
        let page = with_retries(self.retry, "list WAL", || store.page(walk)).await?;
        // Stores fill every page but the last.
        self.ended = page.len() < self.walk.page_size();
        let Some(last) = page.last() else {
            self.ended = true;
            return Ok(None);
        };
        self.walk.advance_past(&last.key);
        Ok(Some(
            page.into_iter()
                .map(|object| {
                    let file_name = object.key.rsplit('/').next().unwrap_or_default();
                    let kind = file_name
                        .strip_suffix(".lzo")
                        .map_or(WalFileKind::Other, WalFileKind::of);
                    WalObject {
                        key: object.key,
                        kind,
                    }
                })
                .collect(),
        ))
    }
}

/// Which backup a command asks for.
#[derive(Debug, Clone)]
pub enum Wanted<'a> {
    /// A name, `LATEST`, or every backup.
    Query(Query),
    /// The newest backup that stopped before this time (`--target-time` without a name),
    /// by the stop time PostgreSQL recorded.
    StoppedBefore {
        /// The time as given.
        time: &'a str,
        /// The instant it names.
        at: std::time::SystemTime,
        /// To read the backup history files.
        decoding: &'a Decoding,
    },
}

/// The complete backups `wanted` selects: never none (that is [`Error::NotFound`] naming
/// what is missing: the archive has no backups, the named one is absent or unfinished, or
/// none stopped before the time).
pub async fn resolve_backups(
    config: &Config,
    store: &Store,
    layout: &Layout,
    wanted: &Wanted<'_>,
) -> Result<Vec<Backup>, Error> {
    let all = with_retries(&config.retry, "list backups", || {
        backups::list(store, layout)
    })
    .await?;
    let none_complete = all.is_empty();
    let query = match wanted {
        Wanted::Query(query) => query,
        Wanted::StoppedBefore { .. } if none_complete => {
            return Err(no_backups(store, layout));
        }
        Wanted::StoppedBefore { time, at, decoding } => {
            let backup = backup_before(config, store, layout, all, (time, *at), decoding).await?;
            return Ok(vec![backup]);
        }
    };
    let chosen = backups::select(all, query);
    match (chosen.is_empty(), query) {
        (false, _) => Ok(chosen),
        // An unfinished backup is worth naming even in an archive with no complete one.
        (true, Query::Named(name)) => {
            Err(backups::missing_backup(store, layout, name, none_complete).await)
        }
        (true, _) => Err(no_backups(store, layout)),
    }
}

/// The archive holds no complete backup (that a query selects).
fn no_backups(store: &Store, layout: &Layout) -> Error {
    Error::NotFound(format!(
        "no complete backups found in {}",
        store.url(&layout.basebackups())
    ))
}

/// The one backup `wanted` selects (the first, for a query that selects several).
pub async fn resolve_backup(
    config: &Config,
    store: &Store,
    layout: &Layout,
    wanted: &Wanted<'_>,
) -> Result<Backup, Error> {
    let chosen = resolve_backups(config, store, layout, wanted).await?;
    Ok(chosen
        .into_iter()
        .next()
        .expect("resolve_backups selects one or more"))
}

/// The newest backup that stopped before `target` (`time` as given), by the stop time PostgreSQL recorded
/// (newest backups asked first); the refusal shows every time compared.
async fn backup_before(
    config: &Config,
    store: &Store,
    layout: &Layout,
    mut all: Vec<Backup>,
    (time, target): (&str, std::time::SystemTime),
    decoding: &Decoding,
) -> Result<Backup, Error> {
    all.sort_by(|a, b| b.name.cmp(&a.name));
    let mut compared = Vec::new();
    for backup in all {
        let stop = with_retries(&config.retry, "read the backup history file", || {
            backups::stop_time(store, layout, &backup, decoding)
        })
        .await?;
        let stopped = format!(
            "{} stopped at {} ({})",
            backup.name,
            crate::storage::python_utc_text(stop.at, true),
            stop.source
        );
        if stop.at < target {
            tracing::info!("backup {stopped}, before --target-time {time}");
            return Ok(backup);
        }
        compared.push(stopped);
    }
    Err(Error::NotFound(format!(
        "no backup in {} stopped before --target-time {time} ({}): {}",
        store.url(&layout.basebackups()),
        crate::storage::python_utc_text(target, true),
        compared.join("; ")
    )))
}

/// One tar partition of a base backup.
#[derive(Debug, Clone)]
pub struct Partition {
    number: u64,
    /// Its key.
    pub key: String,
    /// Its size in the store.
    pub size: u64,
}

impl Partition {
    /// `part_00000000.tar.lzo`, for messages.
    pub fn file_name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

/// A backup's partitions in numeric order, checked that none is missing (WAL-E numbers
/// them from 0 without gaps but records no count).
pub async fn partitions(
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
    retry: &RetryPolicy,
) -> Result<Vec<Partition>, Error> {
    let prefix = layout.tar_partitions(backup);
    let listing = with_retries(retry, "list partitions", || store.list(&prefix, Some("/"))).await?;
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
    match numbering_problem(&partitions) {
        Some(reason) => Err(Error::corrupt(store.url(&prefix), reason)),
        None => Ok(partitions),
    }
}

/// What is wrong with the numbering, unless the partitions are numbered 0, 1, 2…
/// without a gap.
fn numbering_problem(partitions: &[Partition]) -> Option<String> {
    if partitions.is_empty() {
        return Some("the backup has no tar partitions".into());
    }
    for (expected, partition) in partitions.iter().enumerate() {
        if partition.number != expected as u64 {
            return Some(format!(
                "partition {expected} is missing (found {} after {})",
                partition.file_name(),
                expected.saturating_sub(1)
            ));
        }
    }
    None
}

/// How many partitions to read at once: as asked, else 4 or the number of CPUs if
/// larger (at most 16), never more than there are partitions.
pub fn partition_pool_size(requested: Option<u16>, partitions: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let wanted = requested.map_or(cpus.clamp(4, 16), usize::from);
    wanted.min(partitions).max(1)
}

/// A partition's body, opened with retries and read from a blocking thread: a broken
/// connection resumes by range, and every read fails once `cancellation` is raised.
pub type PartitionBody = CancellableRead<ResumingReader>;

/// Opens `partition` for reading (waiting for the store stops when `cancellation` is
/// raised); returns its URL and body.
pub async fn open_partition(
    store: &Arc<Store>,
    partition: &Partition,
    retry: RetryPolicy,
    cancellation: &Cancellation,
) -> Result<(String, PartitionBody), Error> {
    let what = format!("fetch {}", partition.file_name());
    let first = tokio::select! {
        biased;
        () = cancellation.cancelled() => return Err(Error::Interrupted),
        first = with_retries(&retry, &what, || store.get(&partition.key)) => first?,
    };
    let url = first.url.clone();
    let body = ResumingReader::new(store.clone(), &partition.key, first, retry);
    Ok((url, cancellation.reader(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_sizes() {
        assert_eq!(partition_pool_size(Some(8), 3), 3);
        assert_eq!(partition_pool_size(Some(1), 3), 1);
        assert!(partition_pool_size(None, 100) >= 4);
    }

    #[test]
    fn partitions_are_numbered_without_gaps() {
        let part = |number| Partition {
            number,
            key: format!("b/tar_partitions/part_{number:08}.tar.lzo"),
            size: 1,
        };
        assert!(numbering_problem(&[part(0), part(1)]).is_none());
        assert!(
            numbering_problem(&[])
                .unwrap()
                .contains("no tar partitions")
        );
        let gap = numbering_problem(&[part(0), part(2)]).unwrap();
        assert!(gap.contains("partition 1 is missing"), "{gap}");
    }
}
