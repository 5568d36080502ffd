//! The catalogue of base backups: complete backups found through their sentinels, which
//! one `LATEST` means, and what a sentinel records.

use std::io::Read;

use tokio::task::JoinSet;

use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::storage::{ObjectMeta, Storage, Store};
use crate::wal::SegmentName;

/// A complete backup: one whose sentinel exists.
#[derive(Debug, Clone)]
pub struct Backup {
    /// `base_<segment>_<offset>`.
    pub name: BackupName,
    /// The sentinel object; its modification time is what `LATEST` orders by.
    pub sentinel: ObjectMeta,
}

/// What the sentinel JSON says about a backup. Fields are optional: old or `--while-offline`
/// backups may lack some, and unknown keys are ignored as WAL-E does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SentinelDetail {
    /// Sum of tar member sizes planned for the backup.
    pub expanded_size_bytes: Option<u64>,
    /// WAL file holding the backup's stop position.
    pub wal_segment_backup_stop: Option<String>,
    /// Offset of the stop position, as written.
    pub wal_segment_offset_backup_stop: Option<String>,
    /// The tablespace spec (`base_prefix`, `tablespaces`, one entry per OID).
    pub spec: Option<serde_json::Value>,
}

/// Which backups a query selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Every complete backup.
    All,
    /// The one with the newest sentinel.
    Latest,
    /// One backup by exact name.
    Named(BackupName),
}

impl Query {
    /// Parses WAL-E's query argument: absent, `LATEST`, or a backup name.
    pub fn parse(query: Option<&str>) -> Result<Query, Error> {
        match query {
            None => Ok(Query::All),
            Some("LATEST") => Ok(Query::Latest),
            Some(name) => BackupName::parse(name).map(Query::Named).ok_or_else(|| {
                Error::Usage(format!(
                    "invalid backup query submitted: {name:?} (expected LATEST or a name like base_000000010000000000000002_00000040)"
                ))
            }),
        }
    }
}

/// Lists complete backups in key order, with one delimited listing of `basebackups_005/`
/// (never the WAL directory, and never every partition key).
pub async fn list(store: &Store, layout: &Layout) -> Result<Vec<Backup>, Error> {
    let listing = store.list(&layout.basebackups(), Some("/")).await?;
    Ok(listing
        .objects
        .into_iter()
        .filter_map(|object| {
            let file_name = object.key.rsplit('/').next()?;
            let name = BackupName::from_sentinel_file_name(file_name)?;
            Some(Backup {
                name,
                sentinel: object,
            })
        })
        .collect())
}

/// When a backup stopped and where that was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopTime {
    /// The instant.
    pub at: std::time::SystemTime,
    /// Its source: the backup history file's `STOP TIME`, or the sentinel's modification
    /// time when the archive holds no readable history file.
    pub source: String,
}

/// When `backup` stopped, as PostgreSQL recorded it: the `STOP TIME` line of the backup
/// history file (`<start segment>.<offset>.backup`) that WAL-E archived beside the WAL.
/// Falls back to the sentinel's modification time, which a copied or re-uploaded
/// archive changes.
pub async fn stop_time(
    store: &Store,
    layout: &Layout,
    backup: &Backup,
    decoding: &crate::decode::Decoding,
) -> Result<StopTime, Error> {
    let prefix = format!("{}{}.", layout.wal_dir(), backup.name.start_segment());
    let listing = store.list(&prefix, None).await?;
    let wanted_offset = backup
        .name
        .start_offset()
        .parse::<u64>()
        .ok()
        .map(|offset| format!("{offset:08X}"));
    let history = listing
        .objects
        .iter()
        .filter(|o| o.key.ends_with(".backup.lzo"))
        .min_by_key(|o| wanted_offset.as_deref().is_none_or(|w| !o.key.contains(w)));
    let fallback = StopTime {
        at: backup.sentinel.modified,
        source: "the sentinel's modification time".into(),
    };
    let Some(history) = history else {
        return Ok(fallback);
    };
    let object = store.get(&history.key).await?;
    let bytes = decoding.read_whole(object, 4096, 64 * 1024).await?;
    let text = String::from_utf8_lossy(&bytes);
    let stop = text
        .lines()
        .find_map(|line| line.strip_prefix("STOP TIME:"))
        .and_then(crate::time::parse_timestamp);
    Ok(match stop {
        Some(at) => StopTime {
            at,
            source: format!("STOP TIME in {}", store.url(&history.key)),
        },
        None => {
            tracing::warn!(
                "{}: no STOP TIME wale can read; using the sentinel's modification time",
                store.url(&history.key)
            );
            fallback
        }
    })
}

/// Why a named backup is not among the complete ones: it exists without its sentinel
/// (WAL-E never finished it), or it does not exist at all (`none_complete`: and the
/// archive has no complete backup either). One listing of its directory.
pub async fn missing_backup(
    store: &Store,
    layout: &Layout,
    name: &BackupName,
    none_complete: bool,
) -> Error {
    let where_ = store.url(&layout.basebackups());
    let directory = format!("{}{name}/", layout.basebackups());
    match store.list(&directory, Some("/")).await {
        Ok(listing) if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() => {
            let unfinished = "is incomplete: it has no sentinel, so WAL-E never finished it";
            Error::NotFound(if none_complete {
                format!("no complete backups found in {where_}: backup {name} {unfinished}")
            } else {
                format!("backup {name} in {where_} {unfinished}")
            })
        }
        Ok(_) if none_complete => Error::NotFound(format!("no complete backups found in {where_}")),
        Ok(_) => Error::NotFound(format!("no backup named {name} in {where_}")),
        Err(err) => err.into(),
    }
}

/// Applies a query. `LATEST` is the newest sentinel, ties going to the later key, exactly
/// as WAL-E chooses; when WAL position disagrees (objects copied or re-uploaded, WAL-E
/// #398), a warning names both candidates.
pub fn select(backups: Vec<Backup>, query: &Query) -> Vec<Backup> {
    match query {
        Query::All => backups,
        Query::Named(name) => backups.into_iter().filter(|b| &b.name == name).collect(),
        Query::Latest => {
            let by_wal = backups
                .iter()
                .max_by_key(|b| wal_position(&b.name))
                .cloned();
            let latest = backups.into_iter().reduce(|best, b| {
                if b.sentinel.modified >= best.sentinel.modified {
                    b
                } else {
                    best
                }
            });
            if let (Some(latest), Some(by_wal)) = (&latest, &by_wal)
                && wal_position(&by_wal.name) > wal_position(&latest.name)
            {
                tracing::warn!(
                    "LATEST is {} (newest sentinel, as WAL-E decides), but {} starts later in WAL; name the backup explicitly if that is the one you want",
                    latest.name,
                    by_wal.name
                );
            }
            latest.into_iter().collect()
        }
    }
}

/// Order by WAL position: timeline, then segment, then offset text.
fn wal_position(name: &BackupName) -> (Option<SegmentName>, String) {
    (
        SegmentName::parse(name.start_segment()),
        name.start_offset().to_string(),
    )
}

/// Sentinels are a few hundred bytes; anything far larger is not a sentinel.
const MAX_SENTINEL_BYTES: u64 = 1 << 20;

/// Reads and parses one backup's sentinel.
pub async fn read_detail(
    store: &Store,
    layout: &Layout,
    backup: &BackupName,
) -> Result<SentinelDetail, Error> {
    let key = layout.sentinel_key(backup);
    let object = store.get(&key).await?;
    let url = object.url.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        object
            .into_blocking_read()
            .take(MAX_SENTINEL_BYTES + 1)
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    })
    .await?
    .map_err(|e| Error::from_read(&url, e))?;
    if bytes.len() as u64 > MAX_SENTINEL_BYTES {
        return Err(Error::corrupt(url, "larger than any backup sentinel"));
    }
    parse_sentinel(&bytes).map_err(|e| Error::corrupt(url, e))
}

/// Reads the sentinels of several backups concurrently, keeping their order.
pub async fn read_details(
    store: &std::sync::Arc<Store>,
    layout: &Layout,
    backups: &[Backup],
    retry: &crate::config::RetryPolicy,
) -> Result<Vec<SentinelDetail>, Error> {
    const CONCURRENCY: usize = 8;
    let mut details = vec![SentinelDetail::default(); backups.len()];
    let mut tasks = JoinSet::new();
    let mut pending = backups.iter().enumerate();
    loop {
        while tasks.len() < CONCURRENCY {
            let Some((index, backup)) = pending.next() else {
                break;
            };
            let (store, layout, name, retry) =
                (store.clone(), layout.clone(), backup.name.clone(), *retry);
            tasks.spawn(async move {
                let what = format!("read sentinel of {name}");
                let detail = crate::retry::with_retries(&retry, &what, || {
                    read_detail(&store, &layout, &name)
                })
                .await;
                (index, detail)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (index, detail) = done?;
        details[index] = detail?;
    }
    Ok(details)
}

/// Why a sentinel cannot be read: the backup's description is damaged.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// Not JSON at all.
    #[error("sentinel is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("sentinel is not a JSON object")]
    NotObject,
}

/// Parses sentinel JSON leniently: missing or oddly typed fields become `None`.
pub fn parse_sentinel(bytes: &[u8]) -> Result<SentinelDetail, SentinelError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let object = value.as_object().ok_or(SentinelError::NotObject)?;
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_string);
    Ok(SentinelDetail {
        expanded_size_bytes: object.get("expanded_size_bytes").and_then(|v| v.as_u64()),
        wal_segment_backup_stop: text("wal_segment_backup_stop"),
        wal_segment_offset_backup_stop: text("wal_segment_offset_backup_stop"),
        spec: object.get("spec").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn backup(name: &str, secs: u64) -> Backup {
        Backup {
            name: BackupName::parse(name).unwrap(),
            sentinel: ObjectMeta {
                key: format!("basebackups_005/{name}_backup_stop_sentinel.json"),
                size: 1,
                modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
                last_modified_text: String::new(),
            },
        }
    }

    const A: &str = "base_000000010000000000000002_00000040";
    const B: &str = "base_000000010000000000000005_00000040";

    #[test]
    fn latest_is_newest_sentinel_with_ties_to_the_later_key() {
        let picked = select(vec![backup(A, 10), backup(B, 5)], &Query::Latest);
        assert_eq!(picked[0].name.as_str(), A);
        let tie = select(vec![backup(A, 10), backup(B, 10)], &Query::Latest);
        assert_eq!(tie[0].name.as_str(), B);
        assert!(select(vec![], &Query::Latest).is_empty());
    }

    #[test]
    fn queries() {
        assert_eq!(Query::parse(None).unwrap(), Query::All);
        assert_eq!(Query::parse(Some("LATEST")).unwrap(), Query::Latest);
        assert!(matches!(Query::parse(Some(A)).unwrap(), Query::Named(_)));
        assert!(Query::parse(Some("latest")).is_err());
        let named = select(
            vec![backup(A, 1), backup(B, 2)],
            &Query::parse(Some(B)).unwrap(),
        );
        assert_eq!(named.len(), 1);
    }

    #[test]
    fn sentinels_parse_leniently() {
        let d = parse_sentinel(br#"{"wal_segment_backup_stop": "000000010000000000000003", "wal_segment_offset_backup_stop": "00000256", "expanded_size_bytes": 49884552, "spec": {"base_prefix": "/x/", "tablespaces": []}, "extra": 1}"#).unwrap();
        assert_eq!(d.expanded_size_bytes, Some(49884552));
        assert_eq!(
            d.wal_segment_offset_backup_stop.as_deref(),
            Some("00000256")
        );
        assert_eq!(parse_sentinel(b"{}").unwrap(), SentinelDetail::default());
        assert!(parse_sentinel(b"not json").is_err());
        assert!(parse_sentinel(b"[]").is_err());
    }
}
