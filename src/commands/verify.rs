//! `verify [BACKUP|LATEST|--all] [--wal-only|--backup-only] [--json]`: whether the archive
//! can be restored, without restoring it.
//!
//! * A backup is read whole through the same chain as `backup-fetch` (GET → decryption →
//!   lzop → tar), partitions in parallel, nothing written: every lzop checksum and the
//!   end of each stream, every tar header, member names `backup-fetch` would refuse,
//!   partition numbering, the total against the sentinel's planned size, `backup_label`
//!   and `global/pg_control` present and `pg_control`'s CRC.
//! * The WAL chain is listed page by page (never the whole `wal_005/` in memory): each
//!   timeline's first and last segment and its gaps, kept as ranges; the history files
//!   are read and followed from the backup's timeline to the newest one that descends
//!   from it, as `recovery_target_timeline = 'latest'` would; every segment recovery
//!   needs from the backup's start to the end of the archive is checked present.
//!
//! Exit 0 when the backup restores to the end of the archive; 1 when something is
//! missing; 202 when something is corrupt; the usual codes when the store fails.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::sync::Arc;

use serde::Serialize;

use super::backup_fetch::{Partition, list_partitions, pool_size};
use crate::backups::{self, Query};
use crate::cli::VerifyArgs;
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::extract::member_path;
use crate::layout::{BackupName, Layout};
use crate::pg::control::ControlData;
use crate::pool::{Cancellation, for_each_bounded};
use crate::retry::with_retries;
use crate::storage::{ResumingReader, Storage, Store};
use crate::tar;
use crate::text::counted;
use crate::wal::{self, Lsn, SegmentName, WalFileKind};

/// Something that keeps the archive from restoring, naming the object.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object (URL) or the missing object's would-be URL.
    pub object: String,
    /// `missing` or `corrupt`.
    pub kind: &'static str,
    /// Why.
    pub reason: String,
}

/// One backup's result.
#[derive(Debug, Serialize)]
struct BackupReport {
    name: String,
    partitions: usize,
    members: u64,
    bytes: u64,
    expanded_size_bytes: Option<u64>,
    system_identifier: Option<u64>,
    ok: bool,
}

/// One timeline as listed: its segments and holes.
#[derive(Debug, Clone, Serialize)]
struct TimelineReport {
    timeline: u32,
    first_segment: String,
    last_segment: String,
    segments: u64,
    gaps: Vec<String>,
    history_file: bool,
}

/// The whole answer, for humans and `--json`.
#[derive(Debug, Serialize)]
struct Report {
    backups: Vec<BackupReport>,
    timelines: Vec<TimelineReport>,
    /// The timelines recovery follows from the backup, in order.
    recovery_timelines: Vec<u32>,
    /// How far the backup restores: the last segment recovery can reach.
    restorable_to: Option<String>,
    /// Whether the backup restores to the end of the archive.
    restorable_to_end: bool,
    /// What `--wal-deep` read and checked (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_deep: Option<DeepReport>,
    problems: Vec<Problem>,
}

/// What `--wal-deep` read: segments, decompressed bytes, and the checks each passed.
#[derive(Debug, Default, Serialize)]
struct DeepReport {
    /// Segments downloaded and decoded.
    segments: u64,
    /// Decompressed bytes of the segments that passed every check.
    bytes: u64,
    /// Segments that passed every check.
    ok: u64,
    /// Segments found corrupt.
    corrupt: u64,
    /// The checks made on each segment.
    checks: Vec<&'static str>,
}

pub async fn run(config: &Config, decoding: &Decoding, args: &VerifyArgs) -> Result<(), Error> {
    let store = Arc::new(Store::open(&config.store).await?);
    let layout = Layout::new(config.store.path_prefix());
    let query = if args.all {
        Query::All
    } else {
        Query::parse(Some(args.backup_name.as_deref().unwrap_or("LATEST")))?
    };
    let listed = with_retries(&config.retry, "list backups", || {
        backups::list(&store, &layout)
    })
    .await?;
    let chosen = backups::select(listed, &query);
    if chosen.is_empty() && args.wal_only && !matches!(query, Query::Named(_)) {
        return verify_wal_only_prefix(config, &store, &layout, decoding, args).await;
    }
    if chosen.is_empty() {
        return Err(match &query {
            Query::Named(name) => backups::missing_backup(&store, &layout, name).await,
            _ => Error::NotFound(format!(
                "no complete backups in {}",
                store.url(&layout.basebackups())
            )),
        });
    }
    let mut report = Report {
        backups: Vec::new(),
        timelines: Vec::new(),
        recovery_timelines: Vec::new(),
        restorable_to: None,
        restorable_to_end: false,
        wal_deep: None,
        problems: Vec::new(),
    };
    let mut segment_size = wal::DEFAULT_SEGMENT_SIZE;
    let mut system_identifier = None;
    if args.wal_only {
        let oldest = chosen.iter().map(|b| &b.name).min_by_key(|n| n.as_str());
        let start = oldest.and_then(|n| SegmentName::parse(n.start_segment()));
        segment_size = learn_segment_size(config, &store, &layout, decoding, start).await?;
    } else {
        for backup in &chosen {
            let (result, control) =
                verify_backup(config, &store, &layout, decoding, &backup.name, args).await?;
            if let Some(control) = control {
                segment_size = u64::from(control.segment_size);
                system_identifier = Some(control.system_identifier);
            }
            report.problems.extend(result.1);
            report.backups.push(result.0);
        }
    }
    if !args.backup_only {
        // The chain from the oldest chosen backup covers the newer ones.
        let oldest = chosen.iter().map(|b| &b.name).min_by_key(|n| n.as_str());
        let backup = oldest.expect("at least one backup");
        let detail = with_retries(&config.retry, "read the sentinel", || {
            backups::read_detail(&store, &layout, backup)
        })
        .await?;
        let wal = WalContext {
            config,
            store: &store,
            layout: &layout,
            decoding,
            segment_size,
        };
        let start = SegmentName::parse(backup.start_segment())
            .ok_or_else(|| Error::Internal(format!("backup name {backup} has no segment")))?;
        let from = WalStart {
            segment: start,
            stop_segment: detail
                .wal_segment_backup_stop
                .as_deref()
                .and_then(SegmentName::parse),
            backup: Some(backup),
        };
        let needed = verify_wal(&wal, &from, &mut report).await?;
        if args.wal_deep {
            check_segments(&wal, &needed, system_identifier, &mut report).await?;
        }
    }
    finish(&report, config, &store, args)
}

/// Prints the report; problems become the command's error.
fn finish(report: &Report, config: &Config, store: &Store, args: &VerifyArgs) -> Result<(), Error> {
    print(report, args.json);
    let corrupt = report.problems.iter().any(|p| p.kind == "corrupt");
    if corrupt {
        return Err(Error::Corrupt {
            url: store.url(config.store.path_prefix()),
            reason: format!(
                "verification failed: {}, something is corrupt",
                counted(report.problems.len() as u64, "problem", "problems")
            ),
        });
    }
    if !report.problems.is_empty() {
        return Err(Error::NotFound(format!(
            "{}: verification failed: {}, something is missing",
            store.url(config.store.path_prefix()),
            counted(report.problems.len() as u64, "problem", "problems")
        )));
    }
    Ok(())
}

/// What one partition held.
#[derive(Debug, Default)]
struct PartitionFacts {
    members: u64,
    bytes: u64,
    backup_label: bool,
    pg_control: Option<Vec<u8>>,
    refused: Vec<String>,
}

async fn verify_backup(
    config: &Config,
    store: &Arc<Store>,
    layout: &Layout,
    decoding: &Decoding,
    backup: &BackupName,
    args: &VerifyArgs,
) -> Result<((BackupReport, Vec<Problem>), Option<ControlData>), Error> {
    let mut problems = Vec::new();
    let sentinel_url = store.url(&layout.sentinel_key(backup));
    let detail = with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, layout, backup)
    })
    .await?;
    let partitions = match list_partitions(store, layout, backup, &config.retry).await {
        Ok(partitions) => partitions,
        Err(Error::Corrupt { url, reason }) => {
            problems.push(Problem {
                object: url,
                kind: "corrupt",
                reason,
            });
            Vec::new()
        }
        Err(other) => return Err(other),
    };
    tracing::info!(
        "verifying {backup}: {}",
        counted(partitions.len() as u64, "partition", "partitions")
    );
    let pool = pool_size(args.pool_size, partitions.len());
    let mut facts = PartitionFacts::default();
    let cancellation = Cancellation::new();
    let work = |partition: Partition| {
        let (store, decoding, retry) = (store.clone(), decoding.clone(), config.retry);
        let cancellation = cancellation.clone();
        async move {
            let url = store.url(&partition.key);
            (
                url,
                verify_partition(store, decoding, retry, partition, cancellation).await,
            )
        }
    };
    for_each_bounded(
        partitions.iter().cloned(),
        pool,
        &cancellation,
        work,
        |(url, result)| {
            match result {
                Ok(one) => {
                    facts.members += one.members;
                    facts.bytes += one.bytes;
                    facts.backup_label |= one.backup_label;
                    if one.pg_control.is_some() {
                        facts.pg_control = one.pg_control;
                    }
                    for member in one.refused {
                        problems.push(Problem {
                            object: url.clone(),
                            kind: "corrupt",
                            reason: member,
                        });
                    }
                }
                Err(err) if err.exit_code() == crate::error::exit::CORRUPT => {
                    problems.push(Problem {
                        object: url,
                        kind: "corrupt",
                        reason: corrupt_reason(&err),
                    })
                }
                Err(err) => return Err(err),
            }
            Ok(())
        },
    )
    .await?;
    let base = store.url(&layout.tar_partitions(backup));
    if !partitions.is_empty() && !facts.backup_label {
        problems.push(Problem {
            object: base.clone(),
            kind: "corrupt",
            reason: "no backup_label in any partition: not a base backup PostgreSQL can start from"
                .into(),
        });
    }
    let control = match &facts.pg_control {
        None if !partitions.is_empty() => {
            problems.push(Problem {
                object: base.clone(),
                kind: "corrupt",
                reason: "no global/pg_control in any partition".into(),
            });
            None
        }
        None => None,
        Some(bytes) => match ControlData::parse(bytes) {
            Ok(control) => Some(control),
            Err(e) => {
                problems.push(Problem {
                    object: format!("{base}global/pg_control"),
                    kind: "corrupt",
                    reason: e.to_string(),
                });
                None
            }
        },
    };
    if let Some(planned) = detail.expanded_size_bytes
        && !partitions.is_empty()
        && facts.bytes < planned - planned / 100
    {
        problems.push(Problem {
            object: sentinel_url,
            kind: "missing",
            reason: format!(
                "the partitions hold {} bytes of file data but the backup planned {planned}: a partition may be missing",
                facts.bytes
            ),
        });
    }
    let report = BackupReport {
        name: backup.to_string(),
        partitions: partitions.len(),
        members: facts.members,
        bytes: facts.bytes,
        expanded_size_bytes: detail.expanded_size_bytes,
        system_identifier: control.as_ref().map(|c| c.system_identifier),
        ok: problems.is_empty(),
    };
    Ok(((report, problems), control))
}

/// The error's reason without the URL the problem already names.
fn corrupt_reason(err: &Error) -> String {
    match err {
        Error::Corrupt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Reads one partition to the end of its stream, writing nothing.
async fn verify_partition(
    store: Arc<Store>,
    decoding: Decoding,
    retry: crate::config::RetryPolicy,
    partition: Partition,
    cancellation: Cancellation,
) -> Result<PartitionFacts, Error> {
    let what = format!("fetch {}", partition.file_name());
    let first = tokio::select! {
        biased;
        () = cancellation.cancelled() => return Err(Error::Interrupted),
        first = with_retries(&retry, &what, || store.get(&partition.key)) => first?,
    };
    let url = first.url.clone();
    let body = cancellation.reader(ResumingReader::new(
        store.clone(),
        &partition.key,
        first,
        retry,
    ));
    let read_url = url.clone();
    tokio::task::spawn_blocking(move || {
        let decoder = decoding
            .decoder(BufReader::with_capacity(256 * 1024, body), &read_url)
            .map_err(|e| Error::from_read(&read_url, e))?;
        let mut archive = tar::Archive::new(decoder);
        read_partition(&mut archive).map_err(|e| tar_error(&read_url, e))
    })
    .await?
}

fn tar_error(url: &str, err: tar::Error) -> Error {
    match err.into_read_error() {
        Ok(io) => Error::from_read(url, io),
        Err(bad) => Error::Corrupt {
            url: url.to_string(),
            reason: bad.to_string(),
        },
    }
}

fn read_partition<R: std::io::Read>(
    archive: &mut tar::Archive<R>,
) -> Result<PartitionFacts, tar::Error> {
    let mut facts = PartitionFacts::default();
    let mut buffer = vec![0u8; 256 * 1024];
    while let Some(header) = archive.next_header()? {
        facts.members += 1;
        let relative = match member_path(&header.path) {
            Ok(relative) => relative,
            Err(reason) => {
                facts
                    .refused
                    .push(format!("member {}: {reason}", header.display_path()));
                None
            }
        };
        if let tar::Kind::Special(kind) = header.kind {
            facts.refused.push(format!(
                "member {}: device, FIFO or special file (type {kind:?}) that backup-fetch refuses",
                header.display_path()
            ));
        }
        let name = relative
            .as_ref()
            .and_then(|p| p.to_str())
            .unwrap_or_default();
        let keep = name == "global/pg_control";
        facts.backup_label |= name == "backup_label";
        let mut kept = Vec::new();
        if header.kind == tar::Kind::File {
            loop {
                let n = archive.read_data(&mut buffer)?;
                if n == 0 {
                    break;
                }
                facts.bytes += n as u64;
                if keep {
                    kept.extend_from_slice(&buffer[..n]);
                }
            }
        }
        if keep {
            facts.pg_control = Some(kept);
        }
    }
    archive.read_to_end_of_stream()?;
    Ok(facts)
}

/// What the listing found on one timeline: segment numbers, as ranges.
#[derive(Debug, Clone)]
struct Run {
    first: u64,
    last: u64,
    /// Missing numbers between `first` and `last`, as inclusive ranges.
    gaps: Vec<(u64, u64)>,
    count: u64,
}

impl Run {
    fn has(&self, number: u64) -> bool {
        number >= self.first
            && number <= self.last
            && !self.gaps.iter().any(|&(a, b)| number >= a && number <= b)
    }
}

/// The archive's WAL, listed page by page.
#[derive(Debug, Default)]
struct Listing {
    runs: BTreeMap<u32, Run>,
    histories: BTreeMap<u32, String>,
}

async fn list_wal(
    config: &Config,
    store: &Store,
    layout: &Layout,
    segment_size: u64,
) -> Result<Listing, Error> {
    let prefix = layout.wal_dir();
    let mut listing = Listing::default();
    let mut after = String::new();
    let page_size = store.listing_page();
    loop {
        let page = with_retries(&config.retry, "list WAL", || {
            store.list_after(&prefix, &after, page_size)
        })
        .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.key.clone();
        for object in &page {
            let file_name = object.key.rsplit('/').next().unwrap_or_default();
            let Some(name) = file_name.strip_suffix(".lzo") else {
                continue;
            };
            match WalFileKind::of(name) {
                WalFileKind::Segment(segment) => {
                    add_segment(&mut listing, segment, segment_size);
                }
                WalFileKind::History(timeline) => {
                    listing.histories.insert(timeline, object.key.clone());
                }
                _ => {}
            }
        }
        if page.len() < page_size {
            break;
        }
    }
    Ok(listing)
}

fn add_segment(listing: &mut Listing, segment: SegmentName, segment_size: u64) {
    let number = segment.number(segment_size);
    match listing.runs.get_mut(&segment.timeline) {
        None => {
            listing.runs.insert(
                segment.timeline,
                Run {
                    first: number,
                    last: number,
                    gaps: Vec::new(),
                    count: 1,
                },
            );
        }
        Some(run) => {
            if number > run.last + 1 {
                run.gaps.push((run.last + 1, number - 1));
            }
            run.last = run.last.max(number);
            run.count += 1;
        }
    }
}

/// What the WAL checks read the archive with.
struct WalContext<'a> {
    config: &'a Config,
    store: &'a Arc<Store>,
    layout: &'a Layout,
    decoding: &'a Decoding,
    segment_size: u64,
}

/// Where the WAL chain starts: a backup's start segment (and its stop segment, which
/// must be reached for the backup to be consistent), or a WAL-only archive's oldest.
struct WalStart<'a> {
    segment: SegmentName,
    stop_segment: Option<SegmentName>,
    backup: Option<&'a BackupName>,
}

/// `verify --wal-only` on a prefix that holds WAL but no complete backup: the chain from
/// its oldest segment, in the segment size the WAL itself records.
async fn verify_wal_only_prefix(
    config: &Config,
    store: &Arc<Store>,
    layout: &Layout,
    decoding: &Decoding,
    args: &VerifyArgs,
) -> Result<(), Error> {
    let Some(oldest) = crate::archive::oldest_segment(config, store, layout).await? else {
        return Err(Error::NotFound(format!(
            "no complete backups and no WAL segments in {}",
            store.url(config.store.path_prefix())
        )));
    };
    tracing::info!(
        "no complete backup in {}: checking the WAL from its oldest segment, {oldest}",
        store.url(&layout.basebackups())
    );
    let segment_size = learn_segment_size(config, store, layout, decoding, Some(oldest)).await?;
    let mut report = Report {
        backups: Vec::new(),
        timelines: Vec::new(),
        recovery_timelines: Vec::new(),
        restorable_to: None,
        restorable_to_end: false,
        wal_deep: None,
        problems: Vec::new(),
    };
    let wal = WalContext {
        config,
        store,
        layout,
        decoding,
        segment_size,
    };
    let from = WalStart {
        segment: oldest,
        stop_segment: None,
        backup: None,
    };
    let needed = verify_wal(&wal, &from, &mut report).await?;
    if args.wal_deep {
        check_segments(&wal, &needed, None, &mut report).await?;
    }
    finish(&report, config, store, args)
}

/// The segment size the WAL records: in `preferred`'s first page, else (it is missing)
/// in the archive's oldest segment's; PostgreSQL's default when there is no WAL at all.
async fn learn_segment_size(
    config: &Config,
    store: &Store,
    layout: &Layout,
    decoding: &Decoding,
    preferred: Option<SegmentName>,
) -> Result<u64, Error> {
    if let Some(segment) = preferred {
        match segment_size_of(config, store, layout, decoding, &segment).await {
            Err(Error::NotFound(_)) => {}
            other => return other,
        }
    }
    match crate::archive::oldest_segment(config, store, layout).await? {
        Some(oldest) => segment_size_of(config, store, layout, decoding, &oldest).await,
        None => Ok(wal::DEFAULT_SEGMENT_SIZE),
    }
}

/// The segment size the WAL records in `segment`'s first page.
async fn segment_size_of(
    config: &Config,
    store: &Store,
    layout: &Layout,
    decoding: &Decoding,
    segment: &SegmentName,
) -> Result<u64, Error> {
    let header = crate::archive::segment_header(config, store, layout, segment, decoding).await?;
    let size = u64::from(header.segment_size);
    if !wal::is_valid_segment_size(size) {
        return Err(Error::Corrupt {
            url: store.url(&layout.wal_key(&segment.to_string())),
            reason: format!("its first page records a segment size of {size} bytes"),
        });
    }
    Ok(size)
}

async fn verify_wal(
    wal: &WalContext<'_>,
    from_start: &WalStart<'_>,
    report: &mut Report,
) -> Result<Vec<SegmentName>, Error> {
    let start = from_start.segment;
    let what = match from_start.backup {
        Some(backup) => format!("backup {backup}"),
        None => format!("the archive's oldest segment {start}"),
    };
    let (store, layout, segment_size) = (wal.store, wal.layout, wal.segment_size);
    let mut needed = Vec::new();
    let listing = list_wal(wal.config, store, layout, segment_size).await?;
    let name_of = |timeline: u32, number: u64| {
        SegmentName::from_number(timeline, number, segment_size).to_string()
    };
    let url_of = |name: &str| store.url(&layout.wal_key(name));
    for (&timeline, run) in &listing.runs {
        report.timelines.push(TimelineReport {
            timeline,
            first_segment: name_of(timeline, run.first),
            last_segment: name_of(timeline, run.last),
            segments: run.count,
            gaps: run
                .gaps
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        name_of(timeline, a)
                    } else {
                        format!("{}..{}", name_of(timeline, a), name_of(timeline, b))
                    }
                })
                .collect(),
            history_file: timeline == 1 || listing.histories.contains_key(&timeline),
        });
        if timeline > 1 && !listing.histories.contains_key(&timeline) {
            report.problems.push(Problem {
                object: url_of(&format!("{timeline:08X}.history")),
                kind: "missing",
                reason: format!(
                    "timeline {timeline} has segments but no history file: recovery cannot follow it"
                ),
            });
        }
    }
    // Timelines that descend from the backup's, with where each began.
    let mut chains: BTreeMap<u32, Vec<wal::TimelineSwitch>> = BTreeMap::new();
    for (&timeline, key) in &listing.histories {
        let text = read_small(wal, key).await?;
        match wal::parse_history(&text) {
            Ok(entries) if entries.iter().any(|e| e.parent == start.timeline) => {
                chains.insert(timeline, entries);
            }
            Ok(_) => {}
            Err(reason) => report.problems.push(Problem {
                object: store.url(key),
                kind: "corrupt",
                reason,
            }),
        }
    }
    // As `recovery_target_timeline = 'latest'`: the newest descendant.
    let target = chains.keys().next_back().copied().unwrap_or(start.timeline);
    let mut steps: Vec<(u32, Option<Lsn>)> = chains
        .get(&target)
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.parent >= start.timeline)
                .map(|e| (e.parent, Some(e.switch)))
                .collect()
        })
        .unwrap_or_default();
    steps.push((target, None));
    report.recovery_timelines = steps.iter().map(|(t, _)| *t).collect();

    let stop_number = from_start.stop_segment.map(|s| s.number(segment_size));
    let mut from = start.number(segment_size);
    let mut reached: Option<(u32, u64)> = None;
    let mut complete = true;
    for (timeline, switch) in steps {
        let run = listing.runs.get(&timeline);
        // The segment holding the switch is read from the child timeline.
        let until = match switch {
            Some(lsn) => SegmentName::containing(timeline, lsn, segment_size)
                .number(segment_size)
                .checked_sub(1),
            None => run.map(|r| r.last),
        };
        let Some(until) = until else { continue };
        for number in from..=until {
            if run.is_some_and(|r| r.has(number)) {
                reached = Some((timeline, number));
                needed.push(SegmentName::from_number(timeline, number, segment_size));
                continue;
            }
            let name = name_of(timeline, number);
            let before_stop = stop_number.is_some_and(|stop| number <= stop);
            report.problems.push(Problem {
                object: url_of(&name),
                kind: "missing",
                reason: if before_stop {
                    format!("needed to make {what} consistent: the backup cannot be restored")
                } else {
                    format!(
                        "a gap: recovery from {what} stops before it{}",
                        reached
                            .map(|(t, n)| format!(", at {}", name_of(t, n)))
                            .unwrap_or_default()
                    )
                },
            });
            complete = false;
            break;
        }
        if !complete {
            break;
        }
        if let Some(lsn) = switch {
            from = SegmentName::containing(timeline, lsn, segment_size).number(segment_size);
        }
    }
    report.restorable_to_end = complete;
    let consistent = stop_number.is_none_or(|stop| reached.is_some_and(|(_, n)| n >= stop));
    report.restorable_to = reached.filter(|_| consistent).map(|(t, n)| name_of(t, n));
    Ok(needed)
}

/// How many segments `--wal-deep` reads at once.
const DEEP_CONCURRENCY: usize = 4;

/// `--wal-deep`: every needed segment downloaded, decoded to nowhere and checked.
async fn check_segments(
    wal: &WalContext<'_>,
    needed: &[SegmentName],
    system_identifier: Option<u64>,
    report: &mut Report,
) -> Result<(), Error> {
    let store = wal.store;
    let path: Arc<[u32]> = report.recovery_timelines.clone().into();
    let work = |segment: SegmentName| {
        let key = wal.layout.wal_key(&segment.to_string());
        let (store, decoding, retry, size, path) = (
            store.clone(),
            wal.decoding.clone(),
            wal.config.retry,
            wal.segment_size,
            path.clone(),
        );
        async move {
            let url = store.url(&key);
            let checked = with_retries(&retry, "read a segment", || {
                let expected = Expected {
                    segment,
                    size,
                    system_identifier,
                    path: path.clone(),
                };
                check_segment(&store, &key, &decoding, expected)
            })
            .await;
            (url, checked)
        }
    };
    let cancellation = Cancellation::new();
    let mut deep = DeepReport {
        checks: deep_checks(system_identifier),
        ..DeepReport::default()
    };
    let walked = for_each_bounded(
        needed.iter().copied(),
        DEEP_CONCURRENCY,
        &cancellation,
        work,
        |done| {
            deep.segments += 1;
            match done {
                (_, Ok(bytes)) => {
                    deep.ok += 1;
                    deep.bytes += bytes;
                }
                (url, Err(err)) if err.exit_code() == crate::error::exit::CORRUPT => {
                    deep.corrupt += 1;
                    report.problems.push(Problem {
                        object: url,
                        kind: "corrupt",
                        reason: corrupt_reason(&err),
                    });
                }
                (_, Err(err)) => return Err(err),
            }
            Ok(())
        },
    )
    .await;
    report.wal_deep = Some(deep);
    walked
}

/// The checks `--wal-deep` makes on every segment, as the summary names them.
fn deep_checks(system_identifier: Option<u64>) -> Vec<&'static str> {
    let mut checks = vec![
        "lzop checksums",
        "segment size",
        "page header magic",
        "page address",
        "timeline",
    ];
    if system_identifier.is_some() {
        checks.push("system identifier");
    }
    checks
}

/// What a segment must be.
struct Expected {
    segment: SegmentName,
    size: u64,
    system_identifier: Option<u64>,
    /// The recovery's timelines: the first segment of a timeline begins with pages its
    /// parent wrote, whose headers carry the parent's timeline.
    path: Arc<[u32]>,
}

/// One segment read through: header, system identifier, checksums, size; its
/// decompressed size.
async fn check_segment(
    store: &Store,
    key: &str,
    decoding: &Decoding,
    expected: Expected,
) -> Result<u64, Error> {
    let Expected {
        segment,
        size,
        system_identifier,
        path,
    } = expected;
    let object = store.get(key).await?;
    let url = object.url.clone();
    let decoding = decoding.clone();
    tokio::task::spawn_blocking(move || {
        let corrupt = |reason: String| Error::Corrupt {
            url: url.clone(),
            reason,
        };
        let mut decoder = decoding
            .decoder(BufReader::new(object.into_blocking_read()), &url)
            .map_err(|e| Error::from_read(&url, e))?;
        let mut header = [0u8; wal::LONG_PAGE_HEADER_SIZE];
        std::io::Read::read_exact(&mut decoder, &mut header).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt("shorter than a WAL page header".into())
            } else {
                Error::from_read(&url, e)
            }
        })?;
        let page = wal::LongPageHeader::parse(&header).map_err(&corrupt)?;
        let written_on = if page.timeline < segment.timeline && path.contains(&page.timeline) {
            page.timeline
        } else {
            segment.timeline
        };
        let as_written = SegmentName {
            timeline: written_on,
            ..segment
        };
        wal::check_page_header(&header, &as_written, size).map_err(&corrupt)?;
        if let Some(expected) = system_identifier
            && page.system_identifier != expected
        {
            return Err(corrupt(format!(
                "written by database system {}, not the backup's {expected}",
                page.system_identifier
            )));
        }
        let rest = std::io::copy(&mut decoder, &mut std::io::sink())
            .map_err(|e| Error::from_read(&url, e))?;
        let total = rest + header.len() as u64;
        if total != size {
            return Err(corrupt(format!(
                "decompressed to {total} bytes, not a {size}-byte segment"
            )));
        }
        Ok(total)
    })
    .await?
}

/// A history file's text, through the decode chain (it may be encrypted too).
async fn read_small(wal: &WalContext<'_>, key: &str) -> Result<String, Error> {
    let object = with_retries(&wal.config.retry, "read a history file", || {
        wal.store.get(key)
    })
    .await?;
    let url = object.url.clone();
    let (decoding, object_url) = (wal.decoding.clone(), url.clone());
    let text = tokio::task::spawn_blocking(move || {
        let mut decoder =
            decoding.decoder(BufReader::new(object.into_blocking_read()), &object_url)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut decoder, &mut text).map(|_| text)
    })
    .await?
    .map_err(|e| Error::from_read(&url, e))?;
    Ok(text)
}

fn print(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("the report serializes")
        );
        return;
    }
    for backup in &report.backups {
        println!(
            "backup {}: {}, {}, {}{}{}",
            backup.name,
            counted(backup.partitions as u64, "partition", "partitions"),
            counted(backup.members, "member", "members"),
            counted(backup.bytes, "byte", "bytes"),
            backup
                .system_identifier
                .map(|id| format!(", system {id}"))
                .unwrap_or_default(),
            if backup.ok { ": ok" } else { ": PROBLEMS" }
        );
    }
    for timeline in &report.timelines {
        println!(
            "timeline {}: {} .. {} ({}{}){}",
            timeline.timeline,
            timeline.first_segment,
            timeline.last_segment,
            counted(timeline.segments, "segment", "segments"),
            if timeline.gaps.is_empty() {
                String::new()
            } else {
                format!(", gaps: {}", timeline.gaps.join(", "))
            },
            if timeline.history_file {
                ""
            } else {
                ", no history file"
            }
        );
    }
    if !report.recovery_timelines.is_empty() {
        let path: Vec<String> = report
            .recovery_timelines
            .iter()
            .map(u32::to_string)
            .collect();
        println!("recovery follows timelines {}", path.join(" -> "));
        match (&report.restorable_to, report.restorable_to_end) {
            (Some(end), true) => println!("restorable to the end of the archive ({end})"),
            (Some(end), false) => println!("restorable only up to {end}"),
            (None, _) => println!("NOT restorable"),
        }
    }
    if let Some(deep) = &report.wal_deep {
        println!("{}", deep_summary(deep));
    }
    for problem in &report.problems {
        println!("{}: {}: {}", problem.kind, problem.object, problem.reason);
    }
}

/// `--wal-deep`'s line: what was read and what each segment was checked for.
fn deep_summary(deep: &DeepReport) -> String {
    format!(
        "wal-deep: {} downloaded and decoded ({} decompressed), each checked for {}: {} ok, {} corrupt",
        counted(deep.segments, "segment", "segments"),
        counted(deep.bytes, "byte", "bytes"),
        deep.checks.join(", "),
        deep.ok,
        deep.corrupt
    )
}
