//! One walreceiver's session: the startup handshake (local trust, the peer's uid
//! checked), then the replication commands a physical standby sends, then streaming the
//! archive's WAL from the position and timeline it asks for, to the end of that timeline
//! when a newer one branched off it, waiting (with keepalives) where the archive ends.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::source::ArchiveWal;
use super::wire::{self, Frontend, MessageReader, MessageWriter, StandbyMessage, column};
use crate::error::Error;
use crate::fetch_state::FetchState;
use crate::wal::{Lsn, SegmentName, TimelineSwitch};

/// What every session shares.
pub struct Context {
    /// The server's data directory.
    pub pgdata: std::path::PathBuf,
    /// A recovery to the end of the archive run as a standby: promote it there.
    pub promote_at_end: bool,
    /// The archive's WAL.
    pub archive: ArchiveWal,
    /// The cluster's major version (reported as the server's).
    pub major_version: u32,
    /// Where `wale status` reads how far the archive has been read.
    pub fetch_state: FetchState,
    /// The memory bound of segments fetched ahead (`WALE_PREFETCH_MAX_BYTES`).
    pub prefetch_bytes: u64,
}

/// How often the archive is asked again for a segment it does not have yet.
const POLL: Duration = Duration::from_millis(500);
/// How often, while waiting, the archive is asked for a newer timeline.
const TIMELINE_POLL: Duration = Duration::from_secs(5);
/// A keepalive at least this often, so that `wal_receiver_timeout` never fires.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Segments fetched ahead of the one being sent, at most.
const READ_AHEAD: u64 = 4;

/// SQLSTATE of a refused connection.
const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE of a command this server does not have.
const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE of a request the archive cannot answer.
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// SQLSTATE of WAL that cannot be read.
const DATA_CORRUPTED: &str = "XX001";

/// Runs one session. Errors are the archive's, worth recording (a failing store, a
/// corrupt segment); a client that goes away ends the session quietly.
pub async fn run(connection: UnixStream, context: &Context) -> Result<(), Error> {
    let owner_only = connection
        .peer_cred()
        .is_ok_and(|peer| peer.uid() == rustix::process::geteuid().as_raw());
    let (read, write) = connection.into_split();
    let mut reader = MessageReader::new(read);
    let mut writer = MessageWriter::new(write);
    if !handshake(&mut reader, &mut writer, context, owner_only)
        .await
        .unwrap_or(false)
    {
        return Ok(());
    }
    let (messages, inbox) = mpsc::unbounded_channel();
    let listener = tokio::spawn(forward(reader, messages));
    let mut session = Session {
        context,
        writer,
        inbox,
        newest_timeline: 1,
        naps: 0,
        flushed: Lsn(0),
        promoted: false,
    };
    let result = session.commands().await;
    listener.abort();
    match result {
        Ok(()) => Ok(()),
        Err(Ended::Client(err)) => {
            tracing::debug!("walreceiver gone: {err}");
            Ok(())
        }
        Err(Ended::Archive(err)) => Err(err),
    }
}

/// Why a session ended early.
enum Ended {
    /// The connection broke or the client left.
    Client(std::io::Error),
    /// The archive failed; the client was told.
    Archive(Error),
}

impl From<std::io::Error> for Ended {
    fn from(err: std::io::Error) -> Ended {
        Ended::Client(err)
    }
}

/// The startup packet and its answer. True when the session goes on.
async fn handshake(
    reader: &mut MessageReader<OwnedReadHalf>,
    writer: &mut MessageWriter<OwnedWriteHalf>,
    context: &Context,
    owner_only: bool,
) -> std::io::Result<bool> {
    use pgwire::messages::PgWireBackendMessage as Backend;
    use pgwire::messages::startup::{
        Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
    };
    let startup = loop {
        match reader.next().await? {
            Some(Frontend::SslNegotiation(_)) => {
                writer.push_refusal();
                writer.flush().await?;
            }
            Some(Frontend::Startup(startup)) => break startup,
            _ => return Ok(false),
        }
    };
    if !owner_only {
        writer
            .error(
                INVALID_AUTHORIZATION,
                "wale's WAL stream serves only the data directory's owner",
                false,
            )
            .await?;
        return Ok(false);
    }
    let physical = startup
        .parameters
        .get("replication")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"));
    if !physical {
        writer
            .error(
                FEATURE_NOT_SUPPORTED,
                "wale's WAL stream takes physical replication connections only (replication=true)",
                false,
            )
            .await?;
        return Ok(false);
    }
    if startup.protocol_number_minor > 0 {
        let unknown = startup
            .parameters
            .keys()
            .filter(|k| k.starts_with("_pq_."))
            .cloned()
            .collect();
        writer.push(Backend::NegotiateProtocolVersion(
            NegotiateProtocolVersion::new(0, unknown),
        ))?;
    }
    writer.push(Backend::Authentication(Authentication::Ok))?;
    let version = format!("{}.0", context.major_version);
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", "wale"),
    ] {
        writer.push(Backend::ParameterStatus(ParameterStatus::new(
            name.to_string(),
            value.to_string(),
        )))?;
    }
    writer.push(Backend::BackendKeyData(BackendKeyData::new(
        std::process::id() as i32,
        SecretKey::I32(0),
    )))?;
    writer.push_ready()?;
    writer.flush().await?;
    Ok(true)
}

/// Reads the client's messages into the session's inbox until the connection ends.
async fn forward(mut reader: MessageReader<OwnedReadHalf>, inbox: mpsc::UnboundedSender<Frontend>) {
    while let Ok(Some(message)) = reader.next().await {
        if inbox.send(message).is_err() {
            return;
        }
    }
}

struct Session<'a> {
    context: &'a Context,
    writer: MessageWriter<OwnedWriteHalf>,
    inbox: mpsc::UnboundedReceiver<Frontend>,
    /// The newest timeline seen in the archive (probing starts there).
    newest_timeline: u32,
    /// Naps taken at the end of the archive (a timeline probe every few).
    naps: u64,
    /// How far the walreceiver has flushed WAL to disk, as it last reported.
    flushed: Lsn,
    /// Whether this session asked for the server's promotion.
    promoted: bool,
}

/// A replication command.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    IdentifySystem,
    TimelineHistory(u32),
    StartReplication { start: Lsn, timeline: Option<u32> },
    Slot,
    Unknown(String),
}

impl Command {
    fn parse(text: &str) -> Command {
        let words: Vec<&str> = text
            .trim()
            .trim_end_matches(';')
            .split_whitespace()
            .collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        match upper
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["IDENTIFY_SYSTEM"] => Command::IdentifySystem,
            ["TIMELINE_HISTORY", n] => n
                .parse()
                .map_or_else(|_| Command::Unknown(text.into()), Command::TimelineHistory),
            ["START_REPLICATION", "SLOT", ..] => Command::Slot,
            ["START_REPLICATION", rest @ ..] => {
                let rest = match rest {
                    ["PHYSICAL", rest @ ..] => rest,
                    rest => rest,
                };
                match rest {
                    [lsn] => Lsn::parse(lsn).map_or_else(
                        || Command::Unknown(text.into()),
                        |start| Command::StartReplication {
                            start,
                            timeline: None,
                        },
                    ),
                    [lsn, "TIMELINE", n] => match (Lsn::parse(lsn), n.parse().ok()) {
                        (Some(start), Some(timeline)) => Command::StartReplication {
                            start,
                            timeline: Some(timeline),
                        },
                        _ => Command::Unknown(text.into()),
                    },
                    _ => Command::Unknown(text.into()),
                }
            }
            _ => Command::Unknown(text.into()),
        }
    }
}

/// How far one `START_REPLICATION` may stream: to the end of the archive on the newest
/// timeline, or to the switch point of an older one.
#[derive(Debug, Clone, Copy)]
struct Extent {
    timeline: u32,
    /// Where the timeline ends and which timeline follows; `None` for the newest.
    end: Option<(Lsn, u32)>,
}

impl<'a> Session<'a> {
    /// Answers commands until the client leaves.
    async fn commands(&mut self) -> Result<(), Ended> {
        while let Some(message) = self.inbox.recv().await {
            let query = match message {
                Frontend::Query(query) => query.query,
                Frontend::Terminate(_) => return Ok(()),
                _ => continue,
            };
            match Command::parse(&query) {
                Command::IdentifySystem => self.identify_system().await?,
                Command::TimelineHistory(timeline) => self.timeline_history(timeline).await?,
                Command::StartReplication { start, timeline } => {
                    self.start_replication(start, timeline).await?;
                }
                Command::Slot => {
                    self.writer
                        .error(
                            FEATURE_NOT_SUPPORTED,
                            "wale's WAL stream has no replication slots",
                            true,
                        )
                        .await?;
                }
                Command::Unknown(text) => {
                    let message = format!("wale's WAL stream does not take {text:?}");
                    self.writer
                        .error(FEATURE_NOT_SUPPORTED, &message, true)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn identify_system(&mut self) -> Result<(), Ended> {
        let newest = self.newest_timeline().await?;
        let archive = &self.context.archive;
        let system = archive.system_identifier.to_string();
        let timeline = newest.to_string();
        // The archive's end is not known without listing it; the walreceiver does not
        // use this column.
        let position = Lsn(0).to_string();
        self.writer.push_row(
            &[
                ("systemid", column::TEXT),
                ("timeline", column::INT4),
                ("xlogpos", column::TEXT),
                ("dbname", column::TEXT),
            ],
            &[
                Some(system.as_bytes()),
                Some(timeline.as_bytes()),
                Some(position.as_bytes()),
                None,
            ],
        )?;
        self.writer.push_complete("IDENTIFY_SYSTEM")?;
        self.writer.push_ready()?;
        self.writer.flush().await?;
        Ok(())
    }

    async fn timeline_history(&mut self, timeline: u32) -> Result<(), Ended> {
        let name = crate::wal::history_file_name(timeline);
        match self.context.archive.history(timeline).await {
            Ok(Some(content)) => {
                self.writer.push_row(
                    &[("filename", column::TEXT), ("content", column::TEXT)],
                    &[Some(name.as_bytes()), Some(&content)],
                )?;
                self.writer.push_complete("TIMELINE_HISTORY")?;
                self.writer.push_ready()?;
                self.writer.flush().await?;
                Ok(())
            }
            Ok(None) => {
                let message = format!("the archive has no {name}");
                self.writer
                    .error(OBJECT_NOT_IN_PREREQUISITE_STATE, &message, true)
                    .await?;
                Ok(())
            }
            Err(err) => Err(self.fail(err, true).await),
        }
    }

    /// Tells the client why the archive failed it, and ends the session with that error.
    async fn fail(&mut self, err: Error, ready: bool) -> Ended {
        let code = if matches!(err.kind(), crate::error::Kind::Corrupt) {
            DATA_CORRUPTED
        } else {
            OBJECT_NOT_IN_PREREQUISITE_STATE
        };
        let line = err.to_string().replace('\n', " ");
        let _ = self.writer.error(code, &line, ready).await;
        Ended::Archive(err)
    }

    async fn newest_timeline(&mut self) -> Result<u32, Ended> {
        match self
            .context
            .archive
            .newest_timeline(self.newest_timeline)
            .await
        {
            Ok(newest) => {
                self.newest_timeline = newest;
                Ok(newest)
            }
            Err(err) => Err(self.fail(err, true).await),
        }
    }

    /// Where `timeline` ends, as the history of `newest` says: its switch point and
    /// the timeline after it. `Ok(None)` when `timeline` is the newest.
    async fn extent(&mut self, timeline: u32, newest: u32) -> Result<Option<Extent>, Error> {
        if timeline >= newest {
            return Ok(Some(Extent {
                timeline,
                end: None,
            }));
        }
        let switches = self.context.archive.switches(newest).await?;
        Ok(end_of(timeline, newest, &switches).map(|end| Extent {
            timeline,
            end: Some(end),
        }))
    }

    async fn start_replication(&mut self, start: Lsn, timeline: Option<u32>) -> Result<(), Ended> {
        let newest = self.newest_timeline().await?;
        let timeline = timeline.unwrap_or(newest);
        let extent = match self.extent(timeline, newest).await {
            Ok(Some(extent)) => extent,
            Ok(None) => {
                let message =
                    format!("requested timeline {timeline} is not in this server's history");
                self.writer
                    .error(OBJECT_NOT_IN_PREREQUISITE_STATE, &message, true)
                    .await?;
                return Ok(());
            }
            Err(err) => return Err(self.fail(err, true).await),
        };
        if let Some((switch, _)) = extent.end
            && start > switch
        {
            let message = format!(
                "requested starting point {start} on timeline {timeline} is not in this server's history; it forked from timeline {timeline} at {switch}"
            );
            self.writer
                .error(OBJECT_NOT_IN_PREREQUISITE_STATE, &message, true)
                .await?;
            return Ok(());
        }
        let nothing_to_send = extent.end.is_some_and(|(switch, _)| start >= switch);
        let extent = if nothing_to_send {
            extent
        } else {
            tracing::info!("streaming from {start} on timeline {timeline}");
            self.writer.push_copy_both()?;
            self.writer.flush().await?;
            match self.stream(start, extent).await? {
                Some(extent) => extent,
                // The client ended the COPY itself: no next timeline to name.
                None => Extent {
                    end: None,
                    ..extent
                },
            }
        };
        if let Some((switch, next)) = extent.end {
            let next = next.to_string();
            let switch = switch.to_string();
            self.writer.push_row(
                &[
                    ("next_tli", column::INT8),
                    ("next_tli_startpos", column::TEXT),
                ],
                &[Some(next.as_bytes()), Some(switch.as_bytes())],
            )?;
        }
        self.writer.push_complete("START_STREAMING")?;
        self.writer.push_complete("START_REPLICATION")?;
        self.writer.push_ready()?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Streams from `start` to the end of `extent`; returns the extent it ended at (after
    /// both sides ended the COPY), or `None` when the client ended it first.
    async fn stream(&mut self, start: Lsn, mut extent: Extent) -> Result<Option<Extent>, Ended> {
        let size = self.context.archive.segment_size;
        let depth = (self.context.prefetch_bytes / size).clamp(1, READ_AHEAD);
        let mut ahead = ReadAhead::default();
        let mut position = start;
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            if let Some((switch, _)) = extent.end
                && position >= switch
            {
                self.writer.push_copy_done()?;
                self.writer.flush().await?;
                return self.await_copy_done().await.map(|()| Some(extent));
            }
            let number = position.0 / size;
            ahead.fill(&self.context.archive, number, depth, &extent, size);
            let head = ahead.queue.front_mut().expect("filled with one at least");
            tokio::select! {
                fetched = &mut head.1 => {
                    let (segment, _) = ahead.queue.pop_front().expect("the head");
                    match fetched.unwrap_or_else(|e| Err(Error::from(e))) {
                        Ok(bytes) => {
                            ahead.missing = false;
                            let end = segment_end(number, size, &extent);
                            let sent = {
                                let _turn = self.context.archive.turn().await;
                                self.send_wal(&bytes, position, end, size).await?
                            };
                            if !sent {
                                return Ok(None);
                            }
                            position = end;
                            self.context.fetch_state.clear_error();
                        }
                        Err(err) if err.is_not_found() => {
                            ahead.abort_all();
                            if !ahead.missing {
                                ahead.missing = true;
                                self.context.fetch_state.record_not_found(&segment);
                                tracing::debug!("waiting for {segment} in the archive");
                            }
                            self.promote_at_end(&extent, position).await;
                            if !self.wait(position, &mut extent).await? {
                                return Ok(None);
                            }
                        }
                        Err(err) => {
                            self.context.fetch_state.record_error(&err.to_string().replace('\n', " "));
                            return Err(self.fail(err, false).await);
                        }
                    }
                }
                message = self.inbox.recv() => {
                    if !self.answer(message, position).await? {
                        return Ok(None);
                    }
                }
                _ = keepalive.tick() => {
                    self.writer.push_keepalive(position, false)?;
                    self.writer.flush().await?;
                }
            }
        }
    }

    /// Sends `bytes` (one whole segment) from `from` up to `to`, in XLogData messages,
    /// answering the client between them. False when the client ended the COPY.
    async fn send_wal(
        &mut self,
        bytes: &[u8],
        from: Lsn,
        to: Lsn,
        size: u64,
    ) -> Result<bool, Ended> {
        let base = from.0 - from.0 % size;
        let mut offset = (from.0 - base) as usize;
        let end = (to.0 - base) as usize;
        while offset < end {
            let chunk = (end - offset).min(wire::MAX_WAL_PAYLOAD);
            self.writer
                .send_wal(
                    Lsn(base + offset as u64),
                    to,
                    &bytes[offset..offset + chunk],
                )
                .await?;
            offset += chunk;
            while let Ok(message) = self.inbox.try_recv() {
                if !self
                    .answer(Some(message), Lsn(base + offset as u64))
                    .await?
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// At the end of the archive (the segment at `position` just found missing): waits
    /// [`POLL`] (answering the client), and every [`TIMELINE_POLL`] looks for a newer
    /// timeline branching off this one, which ends this stream at its switch point. A
    /// recovery to the end is promoted as soon as the walreceiver reports everything up to
    /// `position` flushed, not at the next poll. False when the client ended the COPY.
    async fn wait(&mut self, position: Lsn, extent: &mut Extent) -> Result<bool, Ended> {
        let nap = tokio::time::sleep(POLL);
        tokio::pin!(nap);
        loop {
            tokio::select! {
                () = &mut nap => break,
                message = self.inbox.recv() => {
                    if !self.answer(message, position).await? {
                        return Ok(false);
                    }
                    self.promote_at_end(extent, position).await;
                }
            }
        }
        if extent.end.is_none() && self.timeline_due() {
            let newest = match self
                .context
                .archive
                .newest_timeline(self.newest_timeline)
                .await
            {
                Ok(newest) => newest,
                Err(err) => {
                    tracing::warn!("cannot look for a newer timeline: {err}");
                    return Ok(true);
                }
            };
            if newest > extent.timeline {
                self.newest_timeline = newest;
                match self.extent(extent.timeline, newest).await {
                    Ok(Some(found)) => *extent = found,
                    Ok(None) => {}
                    Err(err) => tracing::warn!("cannot read timeline {newest}'s history: {err}"),
                }
            }
        }
        Ok(true)
    }

    /// For a recovery to the end of the archive: once the walreceiver has flushed
    /// everything up to `end` (where the archive's WAL on the open-ended `extent`'s
    /// timeline ends) and the archive has no newer timeline, asks for the promotion.
    /// PostgreSQL looks for it only when it has replayed all it has, that is the
    /// archive's end.
    async fn promote_at_end(&mut self, extent: &Extent, end: Lsn) {
        if !self.context.promote_at_end
            || self.promoted
            || extent.end.is_some()
            || self.flushed < end
        {
            return;
        }
        let timeline = extent.timeline;
        match self.context.archive.newest_timeline(timeline).await {
            Ok(newest) if newest == timeline => {}
            Ok(_) => return,
            Err(err) => {
                tracing::warn!("cannot look for a newer timeline before promoting: {err}");
                return;
            }
        }
        match crate::pg::server::request_promotion(&self.context.pgdata) {
            Ok(()) => {
                self.promoted = true;
                tracing::info!(
                    "the archive ends at {end} on timeline {timeline}, all of it flushed by the standby: promotion requested"
                );
            }
            Err(err) => tracing::warn!("cannot request the promotion: {err}"),
        }
    }

    /// One probe for a newer timeline per [`TIMELINE_POLL`], counted in [`POLL`] naps.
    fn timeline_due(&mut self) -> bool {
        self.naps += 1;
        self.naps % (TIMELINE_POLL.as_millis() / POLL.as_millis()) as u64 == 1
    }

    /// Answers one message received during COPY. False when the client ended it.
    async fn answer(&mut self, message: Option<Frontend>, position: Lsn) -> Result<bool, Ended> {
        match message {
            None | Some(Frontend::Terminate(_)) => Err(Ended::Client(std::io::Error::from(
                std::io::ErrorKind::ConnectionAborted,
            ))),
            Some(Frontend::CopyDone(_)) => {
                self.writer.push_copy_done()?;
                self.writer.flush().await?;
                Ok(false)
            }
            Some(Frontend::CopyData(data)) => {
                if let StandbyMessage::Status {
                    flush,
                    reply_requested,
                    ..
                } = StandbyMessage::parse(&data.data)
                {
                    self.flushed = self.flushed.max(flush);
                    if reply_requested {
                        self.writer.push_keepalive(position, false)?;
                        self.writer.flush().await?;
                    }
                }
                Ok(true)
            }
            Some(_) => Ok(true),
        }
    }

    /// After this side's CopyDone: the client's.
    async fn await_copy_done(&mut self) -> Result<(), Ended> {
        loop {
            match self.inbox.recv().await {
                Some(Frontend::CopyDone(_)) => return Ok(()),
                None | Some(Frontend::Terminate(_)) => {
                    return Err(Ended::Client(std::io::Error::from(
                        std::io::ErrorKind::ConnectionAborted,
                    )));
                }
                Some(_) => {}
            }
        }
    }
}

/// Where `timeline` ends on the way to `newest` (history `switches`), and its child.
fn end_of(timeline: u32, newest: u32, switches: &[TimelineSwitch]) -> Option<(Lsn, u32)> {
    let index = switches.iter().position(|s| s.parent == timeline)?;
    let child = switches.get(index + 1).map_or(newest, |s| s.parent);
    Some((switches[index].switch, child))
}

/// The end of what segment `number` contributes: its end, or the timeline's switch
/// point inside it.
fn segment_end(number: u64, size: u64, extent: &Extent) -> Lsn {
    let end = Lsn((number + 1) * size);
    match extent.end {
        Some((switch, _)) if switch < end => switch,
        _ => end,
    }
}

/// The file that holds segment `number` of `extent`: the timeline's own, except the
/// segment of its switch point, which the archive holds complete on the next timeline
/// (the old timeline's copy may be partial or missing), as PostgreSQL's walsender reads it.
fn file_of(number: u64, size: u64, extent: &Extent) -> SegmentName {
    let timeline = match extent.end {
        Some((switch, next)) if switch.0 / size == number => next,
        _ => extent.timeline,
    };
    SegmentName::from_number(timeline, number, size)
}

/// One segment's fetch under way: its bytes, decoded and checked.
type Fetch = JoinHandle<Result<Vec<u8>, Error>>;

/// Segments being fetched, in order.
#[derive(Default)]
struct ReadAhead {
    queue: VecDeque<(SegmentName, Fetch)>,
    /// The head was missing last time: fetch it alone until it comes.
    missing: bool,
}

impl ReadAhead {
    /// Queues fetches from segment `number` on: `depth` of them, one while the archive
    /// ends there.
    fn fill(&mut self, archive: &ArchiveWal, number: u64, depth: u64, extent: &Extent, size: u64) {
        let want = if self.missing { 1 } else { depth };
        let last_number = extent
            .end
            .map(|(switch, _)| (switch.0.saturating_sub(1)) / size);
        let queued = self.queue.len() as u64;
        for k in queued..want {
            let n = number + k;
            if last_number.is_some_and(|last| n > last) {
                break;
            }
            let segment = file_of(n, size, extent);
            let archive = archive.clone();
            self.queue.push_back((
                segment,
                tokio::spawn(async move { archive.segment(segment).await }),
            ));
        }
    }

    fn abort_all(&mut self) {
        for (_, task) in self.queue.drain(..) {
            task.abort();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_as_a_walreceiver_sends_them() {
        assert_eq!(Command::parse("IDENTIFY_SYSTEM"), Command::IdentifySystem);
        assert_eq!(
            Command::parse("TIMELINE_HISTORY 3"),
            Command::TimelineHistory(3)
        );
        assert_eq!(
            Command::parse("START_REPLICATION 0/3000000 TIMELINE 2"),
            Command::StartReplication {
                start: Lsn(0x300_0000),
                timeline: Some(2)
            }
        );
        assert_eq!(
            Command::parse("START_REPLICATION PHYSICAL 1/0"),
            Command::StartReplication {
                start: Lsn(1 << 32),
                timeline: None
            }
        );
        assert_eq!(
            Command::parse("START_REPLICATION SLOT \"s\" 0/0 TIMELINE 1"),
            Command::Slot
        );
        assert!(matches!(Command::parse("SHOW x"), Command::Unknown(_)));
    }

    #[test]
    fn an_older_timeline_ends_at_its_switch_point_and_its_last_segment_is_the_childs() {
        let switches = [
            TimelineSwitch {
                parent: 1,
                switch: Lsn(0x500_00A0),
            },
            TimelineSwitch {
                parent: 2,
                switch: Lsn(0x900_0000),
            },
        ];
        assert_eq!(end_of(1, 3, &switches), Some((Lsn(0x500_00A0), 2)));
        assert_eq!(end_of(2, 3, &switches), Some((Lsn(0x900_0000), 3)));
        assert_eq!(end_of(4, 5, &switches), None);
        let size = 16 << 20;
        let extent = Extent {
            timeline: 1,
            end: Some((Lsn(0x500_00A0), 2)),
        };
        assert_eq!(
            file_of(4, size, &extent).to_string(),
            "000000010000000000000004"
        );
        assert_eq!(
            file_of(5, size, &extent).to_string(),
            "000000020000000000000005"
        );
        assert_eq!(segment_end(5, size, &extent), Lsn(0x500_00A0));
        assert_eq!(segment_end(4, size, &extent), Lsn(0x500_0000));
    }
}
