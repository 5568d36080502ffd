//! Where a restored server stands against the archive: what `wale status` shows and what
//! `wale promote` decides on, gathered in one place beneath both commands.
//!
//! The server is found through `postmaster.pid` and asked, over its socket and as the
//! data directory's owner, for its replay position; the archive is asked for its newest
//! segment on that timeline with one listing that starts at the replay segment (so the
//! cost follows the lag, not the archive's length) and for the next timeline's history
//! file. "Caught up" needs proof that the newest segment was read to its end: `wal-fetch`
//! recorded "not found" for the segment after it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::WalPages;
use crate::config::Config;
use crate::error::Error;
use crate::fetch_state::FetchState;
use crate::layout::Layout;
use crate::pg::datadir::{DataDir, RecoveryRequest};
use crate::pg::server::{self, Binaries, Connection, PidFile};
use crate::pg::version::Major;
use crate::storage::Store;
use crate::text::counted;
use crate::wal::{Lsn, SegmentName, WalFileKind};

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

/// Asks the data directory, its server and the archive. A server that is not running or
/// does not answer, and an archive that cannot be asked, are reports (with their
/// reason), not errors.
pub async fn gather(
    config: &Config,
    pgdata: &Path,
    pg_bin: Option<&Path>,
) -> Result<Report, Error> {
    let control = crate::pg::control::read(pgdata).await?;
    let data_dir = DataDir::new(pgdata);
    let state = data_dir.fetch_state();
    let request = data_dir.recovery_request();
    let mut report = Report::from_data_dir(&data_dir, request, &state);
    let Some(connection) = connect(&data_dir, control.major_version, pg_bin)? else {
        report.reason = "no server is running on this data directory".into();
        return Ok(report);
    };
    report.running = true;
    let major = Major::new(control.major_version).map_err(|e| Error::Usage(e.to_string()))?;
    let replay = match ask_server(&connection, &data_dir, major, &state) {
        Err(Error::Server { detail, .. }) => {
            report.record_unanswered(&detail);
            return Ok(report);
        }
        other => other?,
    };
    report.record_replay(&replay);
    if !replay.in_recovery {
        report.reason = "the server is not in recovery (promoted, or a primary)".into();
        return Ok(report);
    }
    let Some(lsn) = replay.lsn else {
        report.reason = "the server has not replayed anything yet".into();
        return Ok(report);
    };
    let position = Position::new(replay.timeline, lsn, control.segment_size);
    report.record_position(&position, request, &data_dir);
    match ask_archive(config, &position.segment).await {
        Ok(archive) => report.compare(&position, &archive, &state),
        // The server's side is known; the archive's is not: say why, not caught up.
        Err(err) => report.record_archive_error(&err),
    }
    Ok(report)
}

/// What the server replays, read once.
struct Replay {
    in_recovery: bool,
    lsn: Option<Lsn>,
    timeline: u32,
    paused: bool,
    timestamp: Option<String>,
}

/// Where replay stands in WAL: the position, its segment, and the segment size they are
/// counted in.
struct Position {
    lsn: Lsn,
    segment: SegmentName,
    segment_size: u64,
}

impl Position {
    fn new(timeline: u32, lsn: Lsn, segment_size: u32) -> Position {
        let segment_size = u64::from(segment_size);
        Position {
            lsn,
            segment: SegmentName::ending_at(timeline, lsn, segment_size),
            segment_size,
        }
    }
}

/// What the archive holds from the replay segment on.
struct ArchiveAnswer {
    /// Its newest segment on the replay timeline.
    last: Option<SegmentName>,
    /// The next timeline, when its history file is there.
    newer_timeline: Option<u32>,
}

impl Report {
    /// What the data directory itself says (how it recovers, its target, what `wal-fetch`
    /// recorded); the server's and the archive's sides still unknown.
    fn from_data_dir(data_dir: &DataDir, request: RecoveryRequest, state: &FetchState) -> Report {
        Report {
            pgdata: data_dir.path().to_path_buf(),
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
        }
    }

    /// A running server that did not answer: still starting up (it accepts no
    /// connections until consistent), or failing for `detail`.
    fn record_unanswered(&mut self, detail: &str) {
        if detail.contains("Hot standby mode is disabled") {
            // A recovery to the end (`hot_standby = off`), or PostgreSQL 13 and older,
            // which say "starting up" for it too.
            self.in_recovery = Some(true);
            self.reason = "recovering with hot_standby off (a recovery to the end): the server accepts no connections until it is promoted (last_error says why it may be stuck)".into();
        } else if detail.contains("starting up") {
            self.in_recovery = Some(true);
            self.reason = "the server is starting up: it accepts no connections until it is consistent, or with hot_standby off until it is promoted (last_error says why it may be stuck)".into();
        } else {
            self.reason = format!("the server does not answer: {detail}");
        }
    }

    /// The server's answer.
    fn record_replay(&mut self, replay: &Replay) {
        self.in_recovery = Some(replay.in_recovery);
        self.timeline = Some(replay.timeline);
        self.paused = replay.paused;
        self.replay_timestamp = replay.timestamp.clone();
    }

    /// Where replay stands, and whether a pause there is the recovery target's.
    fn record_position(
        &mut self,
        position: &Position,
        request: RecoveryRequest,
        data_dir: &DataDir,
    ) {
        self.replay_lsn = Some(position.lsn.to_string());
        self.replay_segment = Some(position.segment.to_string());
        self.paused_at_target = self.paused
            && request == RecoveryRequest::Archive
            && self.recovery_target.is_some()
            && stopped_at_target(data_dir.path());
    }

    /// The archive could not be asked: the reason says why, and the report is not
    /// caught up.
    fn record_archive_error(&mut self, err: &Error) {
        let line = err.to_string().replace('\n', " ");
        self.reason = format!("the archive cannot be asked: {line}");
        self.archive_error = Some(line);
    }

    /// Replay against the archive: the lag, then the verdict.
    fn compare(&mut self, position: &Position, archive: &ArchiveAnswer, state: &FetchState) {
        let size = position.segment_size;
        self.newer_timeline = archive.newer_timeline;
        self.archive_last_segment = archive.last.map(|s| s.to_string());
        if let Some(last) = archive.last {
            let behind = last
                .number(size)
                .saturating_sub(position.segment.number(size));
            self.lag_segments = Some(behind);
            self.lag_bytes = Some(
                last.next(size)
                    .start_lsn(size)
                    .0
                    .saturating_sub(position.lsn.0),
            );
        }
        self.reason = self.why_not_caught_up(position, archive.last, state);
        self.caught_up = self.reason.is_empty();
        if self.caught_up {
            self.reason = "replayed everything the archive holds".into();
        }
    }

    /// What keeps replay from being caught up with the archive, in words; empty when
    /// nothing does.
    fn why_not_caught_up(
        &self,
        position: &Position,
        last: Option<SegmentName>,
        state: &FetchState,
    ) -> String {
        let replay_segment = position.segment;
        let read_to_end = last.is_some_and(|last| {
            last == replay_segment
                && state
                    .last_not_found()
                    .is_some_and(|(_, missing)| missing == last.next(position.segment_size))
        });
        if self.paused_at_target {
            format!(
                "paused at the recovery target ({}); `wale promote` ends recovery here",
                self.recovery_target.as_deref().unwrap_or_default()
            )
        } else if self.paused {
            "replay is paused (pg_wal_replay_resume(), or raise the settings the log names)".into()
        } else if let Some(timeline) = self.newer_timeline {
            format!("the archive has a newer timeline {timeline} to follow")
        } else if last.is_none() {
            format!(
                "the archive has no segment on timeline {} from {replay_segment} on",
                replay_segment.timeline
            )
        } else if last != Some(replay_segment) {
            let behind = self.lag_segments.unwrap_or_default();
            format!(
                "{} behind the archive",
                counted(behind, "segment", "segments")
            )
        } else if !read_to_end {
            "in the archive's newest segment; not yet read to its end (wal-fetch has not asked for the next one)".into()
        } else {
            String::new()
        }
    }
}

/// A connection to the server running on the data directory, as its owner; `None` when
/// no server runs there.
fn connect(
    data_dir: &DataDir,
    major_version: u32,
    pg_bin: Option<&Path>,
) -> Result<Option<Connection>, Error> {
    let pgdata = data_dir.path();
    let pid = PidFile::read(pgdata)
        .map_err(|e| Error::local(pgdata.join("postmaster.pid"), "cannot read", e))?
        .filter(PidFile::is_alive);
    let Some(pid) = pid else {
        return Ok(None);
    };
    let binaries = Binaries::for_data_dir(major_version, pg_bin, data_dir, Some(&pid))
        .map_err(|e| Error::Usage(e.to_string()))?;
    let owner = server::owner_of(pgdata).map_err(|e| Error::local(pgdata, "cannot inspect", e))?;
    let connection = Connection::new(&binaries, &owner, &pid).ok_or_else(|| {
        Error::Usage(format!(
            "{}: the server listens on no Unix socket; wale status needs one",
            pgdata.display()
        ))
    })?;
    Ok(Some(connection))
}

/// The archive's newest segment on the replay timeline (from the replay segment on), and
/// a newer timeline if its history file is there.
async fn ask_archive(
    config: &Config,
    replay_segment: &SegmentName,
) -> Result<ArchiveAnswer, Error> {
    let store = Store::open(&config.store).await?;
    let layout = Layout::new(config.store.path_prefix());
    let last = newest_segment_from(config, &store, &layout, replay_segment).await?;
    let next = replay_segment.timeline + 1;
    let newer_timeline = crate::archive::has_history(&store, &layout, &config.retry, next)
        .await?
        .then_some(next);
    Ok(ArchiveAnswer {
        last,
        newer_timeline,
    })
}

/// Whether the server's log says recovery stopped at its target; with no log to read
/// (a server started by hand), a pause with a target configured is taken as one.
fn stopped_at_target(pgdata: &Path) -> bool {
    match std::fs::read_to_string(server::log_path(pgdata)) {
        Ok(log) => log.contains("recovery stopping"),
        Err(_) => true,
    }
}

/// The server's replay, in one query: whether it recovers, its position, whether it is
/// paused, its timeline and the last replayed commit's time.
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
    let mut pages = WalPages::new(config, store, layout, Some(from));
    let mut newest = None;
    while let Some(page) = pages.next_page().await? {
        for object in page {
            let WalFileKind::Segment(segment) = object.kind else {
                continue;
            };
            if segment.timeline != from.timeline {
                return Ok(newest);
            }
            newest = Some(segment);
        }
    }
    Ok(newest)
}
