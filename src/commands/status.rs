//! `status PGDATA [--json | --format prometheus]`: where a restored server stands
//! against the archive, and an exit status scripts can rely on ([`exit_status`]).
//!
//! The server is found through `postmaster.pid` and asked, over its socket and as the
//! data directory's owner, for its replay position; the archive is asked for its newest
//! segment on that timeline with one listing that starts at the replay segment (so the
//! cost follows the lag, not the archive's length) and for the next timeline's history
//! file. "Caught up" needs proof that the newest segment was read to its end: `wal-fetch`
//! recorded "not found" for the segment after it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cli::{StatusArgs, StatusFormat};
use crate::config::Config;
use crate::error::Error;
use crate::fetch_state::FetchState;
use crate::layout::Layout;
use crate::pg::control::ControlData;
use crate::pg::datadir::{DataDir, RecoveryRequest};
use crate::pg::server::{self, Binaries, Connection, PidFile};
use crate::pg::version::Major;
use crate::retry::with_retries;
use crate::storage::{self, Storage, Store};
use crate::text::counted;
use crate::wal::{Lsn, SegmentName};

/// What `wale status` reports; also what `wale promote` decides on.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The data directory.
    pub pgdata: PathBuf,
    /// Whether a server runs on it.
    pub running: bool,
    /// Whether it is in recovery (`None`: not running).
    pub in_recovery: Option<bool>,
    /// Whether it is a standby (`standby.signal`, or `standby_mode` in `recovery.conf`).
    pub standby: bool,
    /// The recovery target configured, as `name = 'value'` (a point-in-time restore).
    pub recovery_target: Option<String>,
    /// The timeline being replayed.
    pub timeline: Option<u32>,
    /// The last replayed position.
    pub replay_lsn: Option<String>,
    /// The segment holding it, named as `pg_walfile_name()` would.
    pub replay_segment: Option<String>,
    /// When the last replayed transaction committed on the primary.
    pub replay_timestamp: Option<String>,
    /// The archive's newest segment on that timeline.
    pub archive_last_segment: Option<String>,
    /// A newer timeline in the archive (its history file exists).
    pub newer_timeline: Option<u32>,
    /// Segments between the replay segment and the archive's newest.
    pub lag_segments: Option<u64>,
    /// Bytes of WAL from the replay position to the end of the archive's newest segment.
    pub lag_bytes: Option<u64>,
    /// Whether replay is paused (by request, at a target, or for settings too low).
    pub paused: bool,
    /// Paused where the configured recovery target asked it to stop.
    pub paused_at_target: bool,
    /// The last segment `wal-fetch` was told is not in the archive.
    pub last_not_found: Option<String>,
    /// The last `wal-fetch` failure, if none succeeded since.
    pub last_error: Option<String>,
    /// When that failure was recorded (seconds since the epoch); for the metrics only.
    #[serde(skip)]
    pub last_error_unix_time: Option<u64>,
    /// Why `status` itself could not ask the archive (the server's side is still shown).
    pub archive_error: Option<String>,
    /// Everything the archive holds on this timeline has been replayed.
    pub caught_up: bool,
    /// Why not, in words.
    pub reason: String,
}

/// `wale status`'s exit statuses, for scripts (as `pg_isready` has its own). They
/// leave out every status of [`crate::error::exit`]: a failure keeps its own.
pub mod exit_status {
    /// Caught up: the server has replayed everything the archive holds.
    pub const CAUGHT_UP: u8 = 0;
    /// In recovery and not caught up: behind, catching up, starting up, paused by request,
    /// or the archive could not be asked.
    pub const BEHIND: u8 = 3;
    /// A point-in-time recovery paused at its target (`wale promote` ends it there).
    pub const PAUSED_AT_TARGET: u8 = 4;
    /// No server runs on the data directory (or it does not answer).
    pub const NOT_RUNNING: u8 = 5;
    /// The directory is missing or is not a PostgreSQL data directory.
    pub const NOT_A_DATA_DIRECTORY: u8 = 6;
    /// The server runs and is not in recovery: promoted, or a primary.
    pub const NOT_IN_RECOVERY: u8 = 7;
}

/// Runs `wale status`; its exit status is [`exit_status`]'s for the report.
pub async fn run(config: &Config, args: &StatusArgs) -> Result<u8, Error> {
    let report = gather(config, &args.pgdata, args.pg_bin.as_deref()).await?;
    match args.output_format() {
        StatusFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Error::Internal(format!("cannot print JSON: {e}")))?
        ),
        StatusFormat::Prometheus => print!("{}", prometheus(&report, unix_now())),
        StatusFormat::Text => print_human(&report),
    }
    Ok(exit_status(&report))
}

/// The exit status a report gives (see [`exit_status`]).
pub fn exit_status(report: &Report) -> u8 {
    if report.caught_up {
        exit_status::CAUGHT_UP
    } else if report.paused_at_target {
        exit_status::PAUSED_AT_TARGET
    } else if !report.running || report.in_recovery.is_none() {
        exit_status::NOT_RUNNING
    } else if report.in_recovery == Some(false) {
        exit_status::NOT_IN_RECOVERY
    } else {
        exit_status::BEHIND
    }
}

/// Why `pgdata` is not a data directory `status` can report on (missing, not a
/// directory, no `global/pg_control`); `None` when it is one, or when that cannot be
/// told (a permission error is left to [`gather`], which names it).
pub fn not_a_data_directory(pgdata: &Path) -> Option<String> {
    let shown = pgdata.display();
    match std::fs::metadata(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{shown}: no such directory"));
        }
        Ok(meta) if !meta.is_dir() => return Some(format!("{shown}: not a directory")),
        _ => {}
    }
    match std::fs::metadata(pgdata.join("global/pg_control")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "{shown}: not a PostgreSQL data directory (no global/pg_control)"
        )),
        _ => None,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the server replays, read once.
struct Replay {
    in_recovery: bool,
    lsn: Option<Lsn>,
    timeline: u32,
    paused: bool,
    timestamp: Option<String>,
}

/// Asks the server and the archive.
pub async fn gather(
    config: &Config,
    pgdata: &Path,
    pg_bin: Option<&Path>,
) -> Result<Report, Error> {
    let control = read_control(pgdata)?;
    let data_dir = DataDir::new(pgdata);
    let state = data_dir.fetch_state();
    let request = data_dir.recovery_request();
    let mut report = Report {
        pgdata: pgdata.to_path_buf(),
        running: false,
        in_recovery: None,
        standby: request == RecoveryRequest::Standby,
        recovery_target: data_dir.recovery_target(),
        timeline: None,
        replay_lsn: None,
        replay_segment: None,
        replay_timestamp: None,
        archive_last_segment: None,
        newer_timeline: None,
        lag_segments: None,
        lag_bytes: None,
        paused: false,
        paused_at_target: false,
        last_not_found: state.last_not_found().map(|(_, s)| s.to_string()),
        last_error: state.last_error().map(|r| r.text),
        last_error_unix_time: state.last_error().map(|r| r.unix_time),
        archive_error: None,
        caught_up: false,
        reason: String::new(),
    };
    let pid = PidFile::read(pgdata)
        .map_err(|e| Error::local(pgdata.join("postmaster.pid"), "cannot read", e))?
        .filter(PidFile::is_alive);
    let Some(pid) = pid else {
        report.reason = "no server is running on this data directory".into();
        return Ok(report);
    };
    report.running = true;
    let binaries = Binaries::for_data_dir(control.major_version, pg_bin, &data_dir, Some(&pid))
        .map_err(|e| Error::Usage(e.to_string()))?;
    let owner = server::owner_of(pgdata).map_err(|e| Error::local(pgdata, "cannot inspect", e))?;
    let connection = Connection::new(&binaries, &owner, &pid).ok_or_else(|| {
        Error::Usage(format!(
            "{}: the server listens on no Unix socket; wale status needs one",
            pgdata.display()
        ))
    })?;
    let major = Major::new(control.major_version).map_err(|e| Error::Usage(e.to_string()))?;
    let replay = match ask_server(&connection, &data_dir, major, &state) {
        Err(Error::Server { detail, .. }) if detail.contains("starting up") => {
            report.in_recovery = Some(true);
            report.reason = "the server is starting up: it accepts no connections until it is consistent (last_error says why it may be stuck)".into();
            return Ok(report);
        }
        Err(Error::Server { detail, .. }) => {
            report.reason = format!("the server does not answer: {detail}");
            return Ok(report);
        }
        other => other?,
    };
    report.in_recovery = Some(replay.in_recovery);
    report.timeline = Some(replay.timeline);
    report.paused = replay.paused;
    report.replay_timestamp = replay.timestamp.clone();
    if !replay.in_recovery {
        report.reason = "the server is not in recovery (promoted, or a primary)".into();
        return Ok(report);
    }
    let Some(lsn) = replay.lsn else {
        report.reason = "the server has not replayed anything yet".into();
        return Ok(report);
    };
    let size = u64::from(control.segment_size);
    let replay_segment = SegmentName::ending_at(replay.timeline, lsn, size);
    report.replay_lsn = Some(lsn.to_string());
    report.replay_segment = Some(replay_segment.to_string());
    report.paused_at_target = replay.paused
        && request == RecoveryRequest::Archive
        && report.recovery_target.is_some()
        && stopped_at_target(pgdata);

    let (last, newer) = match ask_archive(config, &replay_segment).await {
        Ok(answer) => answer,
        Err(err) => {
            // The server's side is known; the archive's is not: say why, not caught up.
            let line = err.to_string().replace('\n', " ");
            report.reason = format!("the archive cannot be asked: {line}");
            report.archive_error = Some(line);
            return Ok(report);
        }
    };
    report.newer_timeline = newer;
    report.archive_last_segment = last.map(|s| s.to_string());
    if let Some(last) = last {
        let behind = last
            .number(size)
            .saturating_sub(replay_segment.number(size));
        report.lag_segments = Some(behind);
        report.lag_bytes = Some(last.next(size).start_lsn(size).0.saturating_sub(lsn.0));
    }
    let read_to_end = last.is_some_and(|last| {
        last == replay_segment
            && state
                .last_not_found()
                .is_some_and(|(_, missing)| missing == last.next(size))
    });
    report.reason = if report.paused_at_target {
        format!(
            "paused at the recovery target ({}); `wale promote` ends recovery here",
            report.recovery_target.as_deref().unwrap_or_default()
        )
    } else if report.paused {
        "replay is paused (pg_wal_replay_resume(), or raise the settings the log names)".into()
    } else if let Some(timeline) = report.newer_timeline {
        format!("the archive has a newer timeline {timeline} to follow")
    } else if last.is_none() {
        format!(
            "the archive has no segment on timeline {} from {replay_segment} on",
            replay.timeline
        )
    } else if last != Some(replay_segment) {
        let behind = report.lag_segments.unwrap_or_default();
        format!(
            "{} behind the archive",
            counted(behind, "segment", "segments")
        )
    } else if !read_to_end {
        "in the archive's newest segment; not yet read to its end (wal-fetch has not asked for the next one)".into()
    } else {
        String::new()
    };
    report.caught_up = report.reason.is_empty();
    if report.caught_up {
        report.reason = "replayed everything the archive holds".into();
    }
    Ok(report)
}

/// The archive's newest segment on the replay timeline (from the replay segment on), and
/// a newer timeline if its history file is there.
async fn ask_archive(
    config: &Config,
    replay_segment: &SegmentName,
) -> Result<(Option<SegmentName>, Option<u32>), Error> {
    let store = Store::open(&config.store).await?;
    let layout = Layout::new(config.store.path_prefix());
    let last = newest_segment_from(config, &store, &layout, replay_segment).await?;
    let newer = newer_timeline(config, &store, &layout, replay_segment.timeline).await?;
    Ok((last, newer))
}

/// Whether the server's log says recovery stopped at its target; with no log to read
/// (a server started by hand), a pause with a target configured is taken as one.
fn stopped_at_target(pgdata: &Path) -> bool {
    match std::fs::read_to_string(server::log_path(pgdata)) {
        Ok(log) => log.contains("recovery stopping"),
        Err(_) => true,
    }
}

/// `pg_control` of the data directory (read twice if a restartpoint was writing it).
fn read_control(pgdata: &Path) -> Result<ControlData, Error> {
    let path = pgdata.join("global/pg_control");
    let mut last = None;
    for _ in 0..2 {
        let bytes = std::fs::read(&path).map_err(|e| Error::local(&path, "cannot read", e))?;
        match ControlData::parse(&bytes) {
            Ok(control) => return Ok(control),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Corrupt {
        url: path.display().to_string(),
        reason: last.map(|e| e.to_string()).unwrap_or_default(),
    })
}

fn ask_server(
    connection: &Connection,
    data_dir: &DataDir,
    major: Major,
    state: &FetchState,
) -> Result<Replay, Error> {
    let pause = major.replay_paused_sql();
    let sql = format!(
        "select pg_is_in_recovery(), \
         case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end, \
         case when pg_is_in_recovery() then {pause} else false end, \
         (select timeline_id from pg_control_checkpoint()), \
         (select min_recovery_end_timeline from pg_control_recovery()), \
         pg_last_xact_replay_timestamp()"
    );
    let row = connection
        .query(&sql)
        .map_err(|e| Error::Server {
            detail: e.to_string(),
            log: server::log_path(data_dir.path()),
        })?
        .into_iter()
        .next()
        .unwrap_or_default();
    let field = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
    let lsn = Lsn::parse(field(1));
    Ok(Replay {
        in_recovery: field(0) == "t",
        lsn,
        timeline: replay_timeline(data_dir, lsn, state, [field(3), field(4)]),
        paused: field(2) == "t",
        timestamp: Some(field(5).to_string()).filter(|s| !s.is_empty()),
    })
}

/// The timeline replay is on. The history files recovery keeps in `pg_wal` name the
/// timeline it follows and where each ancestor ended, so the replay position settles it
/// (a paused point-in-time recovery on timeline 2 has no restartpoint on 2 yet). Without
/// them: the newest of the checkpoint's and minimum recovery point's timelines, and the
/// timeline `wal-fetch` was last asked on.
fn replay_timeline(
    data_dir: &DataDir,
    lsn: Option<Lsn>,
    state: &FetchState,
    control_timelines: [&str; 2],
) -> u32 {
    let from_control = control_timelines
        .iter()
        .filter_map(|t| t.parse::<u32>().ok())
        .max()
        .unwrap_or(1);
    if let (Some(lsn), Some((target, history))) = (lsn, data_dir.timeline_histories().pop()) {
        return crate::wal::timeline_at(lsn, target, &history).max(from_control);
    }
    match state.last_not_found() {
        Some((_, missing)) if missing.timeline > from_control => missing.timeline,
        _ => from_control,
    }
}

/// The newest segment on `from`'s timeline, listing from `from` itself on.
async fn newest_segment_from(
    config: &Config,
    store: &Store,
    layout: &Layout,
    from: &SegmentName,
) -> Result<Option<SegmentName>, Error> {
    let prefix = layout.wal_dir();
    let mut after = format!("{prefix}{from}");
    let mut newest = None;
    loop {
        let page = with_retries(&config.retry, "list WAL", || {
            store.list_after(&prefix, &after, 1000)
        })
        .await?;
        let Some(last) = page.last() else {
            return Ok(newest);
        };
        after = last.key.clone();
        for object in &page {
            let Some(segment) = object.key[prefix.len()..]
                .strip_suffix(".lzo")
                .and_then(SegmentName::parse)
            else {
                continue;
            };
            if segment.timeline != from.timeline {
                return Ok(newest);
            }
            newest = Some(segment);
        }
    }
}

/// The next timeline, when its history file is in the archive.
async fn newer_timeline(
    config: &Config,
    store: &Store,
    layout: &Layout,
    timeline: u32,
) -> Result<Option<u32>, Error> {
    let next = timeline + 1;
    let key = layout.wal_key(&format!("{next:08X}.history"));
    match with_retries(&config.retry, "look for a newer timeline", || {
        store.head(&key)
    })
    .await
    {
        Ok(_) => Ok(Some(next)),
        Err(storage::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn print_human(report: &Report) {
    let what = match (report.running, report.in_recovery, report.standby) {
        (false, _, _) => "not running".to_string(),
        (true, Some(true), true) => "hot standby following the archive".to_string(),
        (true, Some(true), false) if report.paused_at_target => {
            "paused at the recovery target".to_string()
        }
        (true, Some(true), false) => "recovering from the archive".to_string(),
        _ => "running, not in recovery".to_string(),
    };
    println!("{}: {what}", report.pgdata.display());
    if let Some(timeline) = report.timeline {
        println!("  timeline:        {timeline}");
    }
    if let Some(target) = &report.recovery_target {
        println!("  recovery target: {target}");
    }
    if let (Some(lsn), Some(segment)) = (&report.replay_lsn, &report.replay_segment) {
        println!("  replayed to:     {lsn} (segment {segment})");
    }
    if let Some(time) = &report.replay_timestamp {
        println!("  last commit:     {time}");
    }
    if let Some(last) = &report.archive_last_segment {
        println!(
            "  archive newest:  {last} ({}, {} behind)",
            counted(
                report.lag_segments.unwrap_or_default(),
                "segment",
                "segments"
            ),
            counted(report.lag_bytes.unwrap_or_default(), "byte", "bytes")
        );
    }
    if let Some(error) = &report.last_error {
        println!("  last error:      {error}");
    }
    println!(
        "  caught up:       {} ({})",
        if report.caught_up { "yes" } else { "no" },
        report.reason
    );
    if (report.caught_up && report.standby) || report.paused_at_target {
        println!(
            "  next:            wale promote {} at cutover",
            report.pgdata.display()
        );
    }
}

/// One metric of the Prometheus text format: HELP and TYPE lines, then its sample when
/// the value is known.
struct Metric {
    name: &'static str,
    help: &'static str,
    value: Option<u64>,
}

/// The report in Prometheus' text exposition format, for the node exporter's textfile
/// collector: one gauge per fact, each with a `pgdata` label; unknown values have no
/// sample (e.g. the lag of a server that is not running).
pub fn prometheus(report: &Report, now: u64) -> String {
    let flag = |b: bool| Some(u64::from(b));
    let metrics = [
        Metric {
            name: "wale_server_running",
            help: "Whether a server runs on the data directory (1) or not (0).",
            value: flag(report.running),
        },
        Metric {
            name: "wale_in_recovery",
            help: "Whether the server is in recovery (1) or not (0).",
            value: report.in_recovery.map(u64::from),
        },
        Metric {
            name: "wale_caught_up",
            help: "Whether the server has replayed everything the archive holds (1) or not (0).",
            value: flag(report.caught_up),
        },
        Metric {
            name: "wale_paused_at_target",
            help: "Whether recovery is paused at its recovery target (1) or not (0).",
            value: flag(report.paused_at_target),
        },
        Metric {
            name: "wale_lag_segments",
            help: "WAL segments the archive holds beyond the one being replayed.",
            value: report.lag_segments,
        },
        Metric {
            name: "wale_lag_bytes",
            help: "Bytes of WAL from the replay position to the end of the archive's newest segment.",
            value: report.lag_bytes,
        },
        Metric {
            name: "wale_last_wal_fetch_error_age_seconds",
            help: "Seconds since the last wal-fetch failure not followed by a success (no sample when there is none).",
            value: report.last_error_unix_time.map(|t| now.saturating_sub(t)),
        },
    ];
    let label = prometheus_label(&report.pgdata.to_string_lossy());
    let mut text = String::new();
    for metric in metrics {
        text.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            metric.name, metric.help, metric.name
        ));
        if let Some(value) = metric.value {
            text.push_str(&format!("{}{{pgdata=\"{label}\"}} {value}\n", metric.name));
        }
    }
    text
}

/// A label value escaped as the text format asks: backslash, double quote, newline.
fn prometheus_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            pgdata: PathBuf::from("/srv/pg \"a\""),
            running: true,
            in_recovery: Some(true),
            standby: true,
            recovery_target: None,
            timeline: Some(1),
            replay_lsn: Some("0/3000060".into()),
            replay_segment: Some("000000010000000000000003".into()),
            replay_timestamp: None,
            archive_last_segment: Some("000000010000000000000004".into()),
            newer_timeline: None,
            lag_segments: Some(1),
            lag_bytes: Some(33554336),
            paused: false,
            paused_at_target: false,
            last_not_found: None,
            last_error: Some("s3://b/k: access denied".into()),
            last_error_unix_time: Some(1_000),
            archive_error: None,
            caught_up: false,
            reason: "1 segment behind the archive".into(),
        }
    }

    #[test]
    fn exit_statuses_tell_each_state_and_clash_with_no_failure() {
        let behind = report();
        assert_eq!(exit_status(&behind), exit_status::BEHIND);
        let caught_up = Report {
            caught_up: true,
            ..report()
        };
        assert_eq!(exit_status(&caught_up), 0);
        let at_target = Report {
            paused: true,
            paused_at_target: true,
            ..report()
        };
        assert_eq!(exit_status(&at_target), exit_status::PAUSED_AT_TARGET);
        let stopped = Report {
            running: false,
            in_recovery: None,
            ..report()
        };
        assert_eq!(exit_status(&stopped), exit_status::NOT_RUNNING);
        let promoted = Report {
            in_recovery: Some(false),
            ..report()
        };
        assert_eq!(exit_status(&promoted), exit_status::NOT_IN_RECOVERY);
        use crate::error::exit;
        let failures = [
            exit::NOT_FOUND,
            exit::USAGE,
            exit::UNAVAILABLE,
            exit::STORE_REFUSED,
            exit::CORRUPT,
            exit::LOCAL,
            exit::WAL_FETCH_USAGE,
            exit::INTERRUPTED,
            exit::STANDBY_RETRY,
        ];
        for ours in [
            exit_status::BEHIND,
            exit_status::PAUSED_AT_TARGET,
            exit_status::NOT_RUNNING,
            exit_status::NOT_A_DATA_DIRECTORY,
            exit_status::NOT_IN_RECOVERY,
        ] {
            assert!(
                !failures.contains(&ours),
                "{ours} is already a failure's status"
            );
        }
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_samples() {
        let text = prometheus(&report(), 1_042);
        let label = r#"{pgdata="/srv/pg \"a\""}"#;
        for sample in [
            "wale_server_running 1",
            "wale_in_recovery 1",
            "wale_caught_up 0",
            "wale_paused_at_target 0",
            "wale_lag_segments 1",
            "wale_lag_bytes 33554336",
            "wale_last_wal_fetch_error_age_seconds 42",
        ] {
            let (name, value) = sample.split_once(' ').unwrap();
            assert!(
                text.contains(&format!("\n{name}{label} {value}\n")),
                "{sample} missing:\n{text}"
            );
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        let stopped = Report {
            running: false,
            in_recovery: None,
            lag_segments: None,
            lag_bytes: None,
            last_error: None,
            last_error_unix_time: None,
            ..report()
        };
        let text = prometheus(&stopped, 1_042);
        assert!(text.contains("wale_server_running{"), "{text}");
        for absent in [
            "wale_in_recovery{",
            "wale_lag_segments{",
            "wale_lag_bytes{",
            "wale_last_wal_fetch_error_age_seconds{",
        ] {
            assert!(
                !text.contains(absent),
                "{absent} has no value to show:\n{text}"
            );
        }
    }

    #[test]
    fn missing_and_foreign_directories_are_not_data_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = not_a_data_directory(&dir.path().join("nope")).unwrap();
        assert!(missing.ends_with("nope: no such directory"), "{missing}");
        let empty = not_a_data_directory(dir.path()).unwrap();
        assert!(empty.contains("not a PostgreSQL data directory"), "{empty}");
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), b"").unwrap();
        assert_eq!(not_a_data_directory(dir.path()), None);
    }
}
