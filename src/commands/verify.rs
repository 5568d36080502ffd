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

use crate::archive::{self, Partition, WalPages, Wanted};
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
use crate::storage::{Storage, Store};
use crate::tar;
use crate::text::counted;
use crate::wal::{self, Lsn, SegmentName, TimelineSwitch, WalFileKind};

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

impl Problem {
    /// Something at `object` is corrupt.
    fn corrupt(object: String, reason: impl Into<String>) -> Problem {
        Problem {
            object,
            kind: "corrupt",
            reason: reason.into(),
        }
    }

    /// `object` is missing.
    fn missing(object: String, reason: impl Into<String>) -> Problem {
        Problem {
            object,
            kind: "missing",
            reason: reason.into(),
        }
    }
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
#[derive(Debug, Default, Serialize)]
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

/// Runs `verify`: the chosen backups read whole, then the WAL chain from the oldest.
pub async fn run(config: &Config, decoding: &Decoding, args: &VerifyArgs) -> Result<(), Error> {
    let store = Arc::new(Store::open(&config.store).await?);
    let layout = Layout::new(config.store.path_prefix());
    let query = if args.all {
        Query::All
    } else {
        Query::parse(Some(args.backup_name.as_deref().unwrap_or("LATEST")))?
    };
    let named = matches!(query, Query::Named(_));
    let wanted = Wanted::Query(query);
    let chosen = match archive::resolve_backups(config, &store, &layout, &wanted).await {
        Err(Error::NotFound(_)) if args.wal_only && !named => {
            return verify_wal_only_prefix(config, &store, &layout, decoding, args).await;
        }
        other => other?,
    };
    let mut report = Report::default();
    // The chain from the oldest chosen backup covers the newer ones.
    let oldest = chosen.iter().map(|b| &b.name).min_by_key(|n| n.as_str());
    let oldest = oldest.expect("at least one backup");
    let (segment_size, system_identifier) = if args.wal_only {
        let start = SegmentName::parse(oldest.start_segment());
        let size = learn_segment_size(config, &store, &layout, decoding, start).await?;
        (size, None)
    } else {
        let names: Vec<&BackupName> = chosen.iter().map(|b| &b.name).collect();
        verify_backups(config, &store, &layout, decoding, &names, args, &mut report).await?
    };
    if !args.backup_only {
        let wal = WalContext {
            config,
            store: &store,
            layout: &layout,
            decoding,
            segment_size,
        };
        let from = backup_start(&wal, oldest).await?;
        check_chain(&wal, &from, system_identifier, args.wal_deep, &mut report).await?;
    }
    finish(&report, config, &store, args)
}

/// Every chosen backup read whole; the segment size and system identifier the last
/// readable `pg_control` records (PostgreSQL's default size without one).
async fn verify_backups(
    config: &Config,
    store: &Arc<Store>,
    layout: &Layout,
    decoding: &Decoding,
    chosen: &[&BackupName],
    args: &VerifyArgs,
    report: &mut Report,
) -> Result<(u64, Option<u64>), Error> {
    let mut segment_size = wal::DEFAULT_SEGMENT_SIZE;
    let mut system_identifier = None;
    for backup in chosen {
        let (result, control) =
            verify_backup(config, store, layout, decoding, backup, args).await?;
        if let Some(control) = control {
            segment_size = u64::from(control.segment_size);
            system_identifier = Some(control.system_identifier);
        }
        report.problems.extend(result.1);
        report.backups.push(result.0);
    }
    Ok((segment_size, system_identifier))
}

/// Where `backup`'s chain starts, and the stop segment its sentinel names.
async fn backup_start<'a>(
    wal: &WalContext<'_>,
    backup: &'a BackupName,
) -> Result<WalStart<'a>, Error> {
    let detail = with_retries(&wal.config.retry, "read the sentinel", || {
        backups::read_detail(wal.store, wal.layout, backup)
    })
    .await?;
    let start = SegmentName::parse(backup.start_segment())
        .ok_or_else(|| Error::Internal(format!("backup name {backup} has no segment")))?;
    Ok(WalStart {
        segment: start,
        stop_segment: detail
            .wal_segment_backup_stop
            .as_deref()
            .and_then(SegmentName::parse),
        backup: Some(backup),
    })
}

/// The chain from `from` checked present, and with `deep` every needed segment read.
async fn check_chain(
    wal: &WalContext<'_>,
    from: &WalStart<'_>,
    system_identifier: Option<u64>,
    deep: bool,
    report: &mut Report,
) -> Result<(), Error> {
    let needed = verify_wal(wal, from, report).await?;
    if deep {
        check_segments(wal, &needed, system_identifier, report).await?;
    }
    Ok(())
}

/// Prints the report; problems become the command's error.
fn finish(report: &Report, config: &Config, store: &Store, args: &VerifyArgs) -> Result<(), Error> {
    print(report, args.json);
    let corrupt = report.problems.iter().any(|p| p.kind == "corrupt");
    if corrupt {
        return Err(Error::corrupt(
            store.url(config.store.path_prefix()),
            format!(
                "verification failed: {}, something is corrupt",
                counted(report.problems.len() as u64, "problem", "problems")
            ),
        ));
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

impl PartitionFacts {
    /// Adds what another partition held (its refused members are problems by now).
    fn absorb(&mut self, one: PartitionFacts) {
        self.members += one.members;
        self.bytes += one.bytes;
        self.backup_label |= one.backup_label;
        if one.pg_control.is_some() {
            self.pg_control = one.pg_control;
        }
    }
}

/// One backup read whole: its partitions, what they hold against what the sentinel
/// planned, and its `pg_control` when readable.
async fn verify_backup(
    config: &Config,
    store: &Arc<Store>,
    layout: &Layout,
    decoding: &Decoding,
    backup: &BackupName,
    args: &VerifyArgs,
) -> Result<((BackupReport, Vec<Problem>), Option<ControlData>), Error> {
    let mut problems = Vec::new();
    let detail = with_retries(&config.retry, "read the sentinel", || {
        backups::read_detail(store, layout, backup)
    })
    .await?;
    let partitions = match archive::partitions(store, layout, backup, &config.retry).await {
        Ok(partitions) => partitions,
        Err(Error::Corrupt { url, reason }) => {
            problems.push(Problem::corrupt(url, reason));
            Vec::new()
        }
        Err(other) => return Err(other),
    };
    tracing::info!(
        "verifying {backup}: {}",
        counted(partitions.len() as u64, "partition", "partitions")
    );
    let reading = PartitionReading {
        store,
        decoding,
        retry: config.retry,
        pool_size: args.pool_size,
    };
    let facts = read_partitions(&reading, &partitions, &mut problems).await?;
    let control = if partitions.is_empty() {
        None
    } else {
        let contents = Contents {
            base: store.url(&layout.tar_partitions(backup)),
            sentinel: store.url(&layout.sentinel_key(backup)),
            planned: detail.expanded_size_bytes,
        };
        check_contents(&contents, &facts, &mut problems)
    };
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

/// How partitions are read.
struct PartitionReading<'a> {
    store: &'a Arc<Store>,
    decoding: &'a Decoding,
    retry: crate::config::RetryPolicy,
    pool_size: Option<u16>,
}

/// Every partition read to its end, several at once; what they held together. Corrupt
/// partitions and refused members become problems; any other failure ends the command.
async fn read_partitions(
    reading: &PartitionReading<'_>,
    partitions: &[Partition],
    problems: &mut Vec<Problem>,
) -> Result<PartitionFacts, Error> {
    let pool = archive::partition_pool_size(reading.pool_size, partitions.len());
    let mut facts = PartitionFacts::default();
    let cancellation = Cancellation::new();
    let work = |partition: Partition| {
        let (store, decoding, retry) = (
            reading.store.clone(),
            reading.decoding.clone(),
            reading.retry,
        );
        let cancellation = cancellation.clone();
        async move {
            let url = store.url(&partition.key);
            let result = verify_partition(store, decoding, retry, partition, cancellation).await;
            (url, result)
        }
    };
    let each = |(url, result): (String, Result<PartitionFacts, Error>)| {
        match result {
            Ok(mut one) => {
                for member in std::mem::take(&mut one.refused) {
                    problems.push(Problem::corrupt(url.clone(), member));
                }
                facts.absorb(one);
            }
            Err(Error::Corrupt { reason, .. }) => {
                problems.push(Problem::corrupt(url, reason));
            }
            Err(err) => return Err(err),
        }
        Ok(())
    };
    for_each_bounded(partitions.iter().cloned(), pool, &cancellation, work, each).await?;
    Ok(facts)
}

/// Where a backup's contents are named in problems, and the size it planned.
struct Contents {
    base: String,
    sentinel: String,
    planned: Option<u64>,
}

/// What a base backup must hold: `backup_label`, a readable `global/pg_control`, and
/// about the file data the sentinel planned. Returns the control data when readable.
fn check_contents(
    contents: &Contents,
    facts: &PartitionFacts,
    problems: &mut Vec<Problem>,
) -> Option<ControlData> {
    let base = &contents.base;
    if !facts.backup_label {
        problems.push(Problem::corrupt(
            base.clone(),
            "no backup_label in any partition: not a base backup PostgreSQL can start from",
        ));
    }
    let control = match &facts.pg_control {
        None => {
            problems.push(Problem::corrupt(
                base.clone(),
                "no global/pg_control in any partition",
            ));
            None
        }
        Some(bytes) => ControlData::parse(bytes)
            .map_err(|e| {
                problems.push(Problem::corrupt(
                    format!("{base}global/pg_control"),
                    e.to_string(),
                ))
            })
            .ok(),
    };
    if let Some(planned) = contents.planned
        && facts.bytes < planned - planned / 100
    {
        problems.push(Problem::missing(
            contents.sentinel.clone(),
            format!(
                "the partitions hold {} bytes of file data but the backup planned {planned}: a partition may be missing",
                facts.bytes
            ),
        ));
    }
    control
}

/// Reads one partition to the end of its stream, writing nothing.
async fn verify_partition(
    store: Arc<Store>,
    decoding: Decoding,
    retry: crate::config::RetryPolicy,
    partition: Partition,
    cancellation: Cancellation,
) -> Result<PartitionFacts, Error> {
    let (read_url, body) =
        archive::open_partition(&store, &partition, retry, &cancellation).await?;
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
        Err(bad) => Error::corrupt(url, bad),
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

/// The archive's WAL, as runs per timeline and the history files' keys.
async fn list_wal(
    config: &Config,
    store: &Store,
    layout: &Layout,
    segment_size: u64,
) -> Result<Listing, Error> {
    let mut listing = Listing::default();
    let mut pages = WalPages::new(config, store, layout, None);
    while let Some(page) = pages.next_page().await? {
        for object in page {
            match object.kind {
                WalFileKind::Segment(segment) => {
                    add_segment(&mut listing, segment, segment_size);
                }
                WalFileKind::History(timeline) => {
                    listing.histories.insert(timeline, object.key);
                }
                _ => {}
            }
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
    let mut report = Report::default();
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
    check_chain(&wal, &from, None, args.wal_deep, &mut report).await?;
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
        return Err(Error::corrupt(
            store.url(&layout.wal_key(&segment.to_string())),
            format!("its first page records a segment size of {size} bytes"),
        ));
    }
    Ok(size)
}

/// The WAL chain from `from_start` to the end of the archive: the timelines listed, the
/// path recovery follows, every segment on it present. Returns the segments recovery
/// needs.
async fn verify_wal(
    wal: &WalContext<'_>,
    from_start: &WalStart<'_>,
    report: &mut Report,
) -> Result<Vec<SegmentName>, Error> {
    let start = from_start.segment;
    let names = Names {
        store: wal.store,
        layout: wal.layout,
        segment_size: wal.segment_size,
    };
    let listing = list_wal(wal.config, wal.store, wal.layout, wal.segment_size).await?;
    report_timelines(&listing, &names, report);
    let chains = descendants(wal, &listing, start.timeline, report).await?;
    let steps = recovery_steps(&chains, start.timeline);
    report.recovery_timelines = steps.iter().map(|(t, _)| *t).collect();
    let walk = walk_chain(&listing, &steps, from_start, &names, report);
    report.restorable_to_end = walk.complete;
    let stop_number = from_start.stop_segment.map(|s| s.number(wal.segment_size));
    let consistent = stop_number.is_none_or(|stop| walk.reached.is_some_and(|(_, n)| n >= stop));
    report.restorable_to = walk
        .reached
        .filter(|_| consistent)
        .map(|(t, n)| names.name(t, n));
    Ok(walk.needed)
}

/// Segment names and URLs from timeline and number, in the archive's segment size.
struct Names<'a> {
    store: &'a Store,
    layout: &'a Layout,
    segment_size: u64,
}

impl Names<'_> {
    fn name(&self, timeline: u32, number: u64) -> String {
        SegmentName::from_number(timeline, number, self.segment_size).to_string()
    }

    fn url(&self, name: &str) -> String {
        self.store.url(&self.layout.wal_key(name))
    }

    /// `A` for a one-segment gap, else `A..B`.
    fn range(&self, timeline: u32, (a, b): (u64, u64)) -> String {
        if a == b {
            self.name(timeline, a)
        } else {
            format!("{}..{}", self.name(timeline, a), self.name(timeline, b))
        }
    }
}

/// Each listed timeline into the report; one with segments but no history file is a
/// problem (recovery cannot follow it).
fn report_timelines(listing: &Listing, names: &Names<'_>, report: &mut Report) {
    for (&timeline, run) in &listing.runs {
        let has_history = timeline == 1 || listing.histories.contains_key(&timeline);
        report.timelines.push(TimelineReport {
            timeline,
            first_segment: names.name(timeline, run.first),
            last_segment: names.name(timeline, run.last),
            segments: run.count,
            gaps: run
                .gaps
                .iter()
                .map(|&gap| names.range(timeline, gap))
                .collect(),
            history_file: has_history,
        });
        if !has_history {
            report.problems.push(Problem::missing(
                names.url(&wal::history_file_name(timeline)),
                format!(
                    "timeline {timeline} has segments but no history file: recovery cannot follow it"
                ),
            ));
        }
    }
}

/// The timelines that descend from `timeline`, each with its history; unreadable history
/// files are problems.
async fn descendants(
    wal: &WalContext<'_>,
    listing: &Listing,
    timeline: u32,
    report: &mut Report,
) -> Result<BTreeMap<u32, Vec<TimelineSwitch>>, Error> {
    let mut chains = BTreeMap::new();
    for (&child, key) in &listing.histories {
        let text = read_small(wal, key).await?;
        match wal::parse_history(&text) {
            Ok(entries) if entries.iter().any(|e| e.parent == timeline) => {
                chains.insert(child, entries);
            }
            Ok(_) => {}
            Err(e) => report
                .problems
                .push(Problem::corrupt(wal.store.url(key), e.to_string())),
        }
    }
    Ok(chains)
}

/// As `recovery_target_timeline = 'latest'`: the timelines from `start` to the newest
/// descendant, each with the position where recovery leaves it (`None`: the last).
fn recovery_steps(
    chains: &BTreeMap<u32, Vec<TimelineSwitch>>,
    start: u32,
) -> Vec<(u32, Option<Lsn>)> {
    let target = chains.keys().next_back().copied().unwrap_or(start);
    let mut steps: Vec<(u32, Option<Lsn>)> = chains
        .get(&target)
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.parent >= start)
                .map(|e| (e.parent, Some(e.switch)))
                .collect()
        })
        .unwrap_or_default();
    steps.push((target, None));
    steps
}

/// How far recovery got along the chain.
struct Walk {
    needed: Vec<SegmentName>,
    reached: Option<(u32, u64)>,
    complete: bool,
}

/// Recovery's walk along `steps` from `from_start`, segment by segment, up to the first
/// missing one (a problem).
fn walk_chain(
    listing: &Listing,
    steps: &[(u32, Option<Lsn>)],
    from_start: &WalStart<'_>,
    names: &Names<'_>,
    report: &mut Report,
) -> Walk {
    let size = names.segment_size;
    let mut walk = Walk {
        needed: Vec::new(),
        reached: None,
        complete: true,
    };
    let mut from = from_start.segment.number(size);
    for &(timeline, switch) in steps {
        let run = listing.runs.get(&timeline);
        // The segment holding the switch is read from the child timeline.
        let until = match switch {
            Some(lsn) => SegmentName::containing(timeline, lsn, size)
                .number(size)
                .checked_sub(1),
            None => run.map(|r| r.last),
        };
        let Some(until) = until else { continue };
        let missing = (from..=until).find(|&number| {
            let present = run.is_some_and(|r| r.has(number));
            if present {
                walk.reached = Some((timeline, number));
                walk.needed
                    .push(SegmentName::from_number(timeline, number, size));
            }
            !present
        });
        if let Some(number) = missing {
            let reason = gap_reason(from_start, number, walk.reached, names);
            let name = names.name(timeline, number);
            report
                .problems
                .push(Problem::missing(names.url(&name), reason));
            walk.complete = false;
            break;
        }
        if let Some(lsn) = switch {
            from = SegmentName::containing(timeline, lsn, size).number(size);
        }
    }
    walk
}

/// Why a missing segment matters: before the stop segment the backup cannot be made
/// consistent; after it, recovery stops there.
fn gap_reason(
    from_start: &WalStart<'_>,
    number: u64,
    reached: Option<(u32, u64)>,
    names: &Names<'_>,
) -> String {
    let what = match from_start.backup {
        Some(backup) => format!("backup {backup}"),
        None => format!("the archive's oldest segment {}", from_start.segment),
    };
    let stop_number = from_start
        .stop_segment
        .map(|s| s.number(names.segment_size));
    if stop_number.is_some_and(|stop| number <= stop) {
        format!("needed to make {what} consistent: the backup cannot be restored")
    } else {
        format!(
            "a gap: recovery from {what} stops before it{}",
            reached
                .map(|(t, n)| format!(", at {}", names.name(t, n)))
                .unwrap_or_default()
        )
    }
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
                (url, Err(Error::Corrupt { reason, .. })) => {
                    deep.corrupt += 1;
                    report.problems.push(Problem::corrupt(url, reason));
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
        let corrupt = |reason: String| Error::corrupt(&url, reason);
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
        let page = wal::LongPageHeader::parse(&header).map_err(|e| Error::corrupt(&url, e))?;
        let written_on = if page.timeline < segment.timeline && path.contains(&page.timeline) {
            page.timeline
        } else {
            segment.timeline
        };
        let as_written = SegmentName {
            timeline: written_on,
            ..segment
        };
        wal::check_page_header(&header, &as_written, size).map_err(|e| Error::corrupt(&url, e))?;
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
    let bytes = wal.decoding.read_whole(object, 4096, u64::MAX).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
