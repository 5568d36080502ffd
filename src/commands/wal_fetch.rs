//! `wal-fetch WAL_SEGMENT WAL_DESTINATION`: PostgreSQL's `restore_command`.
//!
//! GET `wal_005/<name>.lzo` → lzop decode (every checksum verified) → an invisible staged
//! file beside the destination → atomic rename. The destination either does not change
//! or holds the complete, verified file. The file is fsynced first unless the destination
//! is PostgreSQL's `RECOVERYXLOG`/`RECOVERYHISTORY`, which PostgreSQL fsyncs itself when it
//! keeps the file and never reads after a crash. Transient storage failures retry the whole
//! pipeline; a missing object is the only failure that exits 1.
//!
//! Under PostgreSQL (run in its data directory, asked for a segment into `RECOVERYXLOG`),
//! a segment the prefetcher has ready is handed over through `pg_wal` instead: renamed to
//! `pg_wal/<segment>` and exit 1. PostgreSQL, finding nothing in the archive, reads the
//! segment from `pg_wal` (its documented order: archive, then `pg_wal`) and skips the
//! fsyncs and renames it makes for a restored file, which were most of the time its
//! startup process spent per segment outside replay. The exit is 1 only once the whole,
//! verified segment is in place under its own name, so recovery never ends early.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cli::WalFetchArgs;
use crate::commands::Options;
use crate::config::Config;
use crate::decode::Decoding;
use crate::durable::StagedFile;
use crate::error::{Error, exit};
use crate::fetch_state::FetchState;
use crate::layout::Layout;
use crate::lzop::DecodeToError;
use crate::pg::datadir::{DataDir, RecoveryRequest};
use crate::prefetch::{Prefetching, wal_directory_of};
use crate::storage::{ObjectReader, SEGMENT_READ_AHEAD, Storage, Store};
use crate::stream::StreamDir;
use crate::wal::{self, WalFileKind};

/// Buffer over the object: the decoder's header reads are a few bytes each, which on a
/// `file://` object would each be a system call (network bodies are already read ahead).
const BODY_BUFFER: usize = 256 * 1024;

/// How long a standby's `wal-fetch` retries an unreachable or failing store before it
/// exits and lets PostgreSQL ask again (archive recovery keeps the whole policy).
const STANDBY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How a successful `wal-fetch` delivered the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// At the destination given: exit 0.
    Restored,
    /// In `pg_wal` under its own name, for PostgreSQL to read from there: exit 1.
    HandedOver,
    /// Left to wale's WAL stream, which the standby turns to next: exit 1.
    Streamed,
}

impl Fetched {
    /// The exit status that tells PostgreSQL where the file is.
    pub fn exit_code(self) -> u8 {
        match self {
            Fetched::Restored => exit::OK,
            Fetched::HandedOver | Fetched::Streamed => exit::HANDED_OVER,
        }
    }
}

/// What `wal-fetch` settled from the local disk alone, before any request to the store.
pub enum Local {
    /// Delivered (a prefetch hit, or left to the WAL stream): nothing else to do.
    Done(Fetched),
    /// Still to fetch: waiting for the prefetcher's download, else from the store.
    Pending(Pending),
}

/// A `wal-fetch` that the local disk did not settle, for [`finish`].
pub struct Pending {
    started: Instant,
    kind: WalFileKind,
    caller: Caller,
    /// The destination's directory, resolved once per call.
    wal_dir: PathBuf,
    prefetching: Option<Prefetching>,
    handover: Option<PathBuf>,
}

/// The whole `wal-fetch` inside a runtime: [`start`], then [`finish`] when the local disk
/// did not settle it. (The binary runs `start` before it builds a runtime:
/// [`crate::commands::wal_fetch`].)
pub async fn run(
    config: &Config,
    options: &Options,
    args: &WalFetchArgs,
) -> Result<Fetched, Error> {
    match start(config, options, args)? {
        Local::Done(fetched) => Ok(fetched),
        Local::Pending(pending) => finish(pending, config, options, args).await,
    }
}

/// The part of `wal-fetch` that needs no runtime and no store: the checks of its
/// arguments, a standby's hand-over to the WAL stream, and a segment the prefetcher has
/// ready. It is most calls during a recovery, so the binary runs it before it builds its
/// async runtime.
pub fn start(config: &Config, options: &Options, args: &WalFetchArgs) -> Result<Local, Error> {
    let name = &args.wal_segment;
    wal::check_archive_name(name).map_err(|why| Error::Usage(format!("{name:?}: {why}")))?;
    let kind = WalFileKind::of(name);
    let started = Instant::now();
    check_destination_directory(&args.wal_destination)?;
    let caller = Caller::here();
    if let Some((stream, pgdata)) = caller.stream(&args.wal_destination, kind)
        && stream.takes_segments(&pgdata, &options.relaunch)
    {
        tracing::info!(
            "left {name} to wale's WAL stream ({}): the standby reads it from there",
            stream.root().display()
        );
        return Ok(Local::Done(Fetched::Streamed));
    }
    let wal_dir = wal_directory_of(&args.wal_destination);
    let prefetching = match kind {
        WalFileKind::Segment(segment) if args.prefetch > 0 => {
            Some(Prefetching::new(config, wal_dir.clone(), segment))
        }
        _ => None,
    };
    let pending = Pending {
        started,
        kind,
        caller,
        wal_dir,
        handover: caller.handover_path(&args.wal_destination, name, kind),
        prefetching,
    };
    let ready = pending.prefetching.as_ref().and_then(|prefetching| {
        prefetching.take_ready(pending.destination(args), &options.relaunch, args.prefetch)
    });
    Ok(match ready {
        Some(size) => Local::Done(pending.delivered(args, size)),
        None => Local::Pending(pending),
    })
}

impl Pending {
    /// Where a segment from the prefetch area goes: handed over, or where asked.
    fn destination<'a>(&'a self, args: &'a WalFetchArgs) -> &'a Path {
        self.handover.as_deref().unwrap_or(&args.wal_destination)
    }

    /// A segment of `size` bytes delivered from the prefetch area: recorded and logged.
    fn delivered(&self, args: &WalFetchArgs, size: u64) -> Fetched {
        let name = &args.wal_segment;
        if let Some(state) = self.caller.state(&self.wal_dir) {
            state.clear_error();
        }
        let elapsed = self.started.elapsed().as_millis();
        let Some(path) = &self.handover else {
            tracing::info!("restored {name} from the prefetch area ({size} bytes in {elapsed} ms)");
            return Fetched::Restored;
        };
        // The hand-over goes beside the destination: into the same directory.
        if let Err(err) = crate::pg::datadir::mark_archived(&self.wal_dir, name) {
            tracing::warn!(
                "cannot mark {name} as archived in {}: {err}",
                self.wal_dir.display()
            );
        }
        tracing::info!(
            "handed {name} over through {} from the prefetch area ({size} bytes in {elapsed} ms)",
            path.display()
        );
        Fetched::HandedOver
    }
}

/// The rest of a `wal-fetch` that [`start`] left pending: the prefetcher's download
/// under way, else the object from the store.
pub async fn finish(
    pending: Pending,
    config: &Config,
    options: &Options,
    args: &WalFetchArgs,
) -> Result<Fetched, Error> {
    let name = &args.wal_segment;
    if let Some(prefetching) = &pending.prefetching
        && let Some(size) = prefetching
            .take_after_miss(pending.destination(args), &options.relaunch, args.prefetch)
            .await
    {
        return Ok(pending.delivered(args, size));
    }
    let Pending {
        started,
        kind,
        caller,
        wal_dir,
        prefetching,
        ..
    } = pending;
    let store = Store::open(&config.store).await?;
    let key = Layout::new(config.store.path_prefix()).wal_key(name);
    let what = format!("wal-fetch {name}");
    // A standby asks again by itself every few seconds: past STANDBY_DEADLINE, waiting
    // inside one call only holds its startup process (and `status`) in the dark.
    let mut retry = config.retry;
    if caller.standby {
        retry.deadline = retry.deadline.min(STANDBY_DEADLINE);
    }
    let bytes = crate::retry::with_retries(&retry, &what, || {
        fetch_once(&store, &key, &args.wal_destination, kind, &options.decoding)
    })
    .await?;
    if let Some(prefetching) = &prefetching {
        prefetching.after_in_band(bytes, &options.relaunch, args.prefetch);
    }
    if let Some(state) = caller.state(&wal_dir) {
        state.clear_error();
    }
    tracing::info!(
        "restored {name} from {} ({bytes} bytes in {} ms)",
        store.url(&key),
        started.elapsed().as_millis()
    );
    Ok(Fetched::Restored)
}

/// Who runs this `wal-fetch`, found out once per call: PostgreSQL's recovery runs it in
/// its data directory (`PG_VERSION` there), a standby's with `standby.signal` (or, up to
/// PostgreSQL 11, a `recovery.conf` in standby mode) beside it.
#[derive(Debug, Clone, Copy)]
struct Caller {
    /// Run by PostgreSQL, in its data directory.
    postgres: bool,
    /// Run by a standby's PostgreSQL.
    standby: bool,
}

impl Caller {
    fn here() -> Caller {
        let postgres = Path::new("PG_VERSION").is_file();
        let standby =
            postgres && DataDir::new(Path::new(".")).recovery_request() == RecoveryRequest::Standby;
        Caller { postgres, standby }
    }

    /// Where a prefetched segment goes when PostgreSQL itself asks for it: `pg_wal/<name>`
    /// beside its `RECOVERYXLOG`, so that it reads the segment from there (see the
    /// module's documentation). `None` for any other caller, which gets the file where it
    /// asked.
    fn handover_path(self, destination: &Path, name: &str, kind: WalFileKind) -> Option<PathBuf> {
        self.asks_for_a_segment(destination, kind)
            .then(|| destination.with_file_name(name))
    }

    /// Whether PostgreSQL asks for a whole segment into its `RECOVERYXLOG`.
    fn asks_for_a_segment(self, destination: &Path, kind: WalFileKind) -> bool {
        self.postgres
            && kind.is_full_segment()
            && destination
                .file_name()
                .is_some_and(|file| file == "RECOVERYXLOG")
    }

    /// The WAL stream of the standby that asks for a segment, when `restore` set one up
    /// ([`crate::stream`]), and the standby's data directory (the working directory,
    /// which the kernel gives resolved).
    fn stream(self, destination: &Path, kind: WalFileKind) -> Option<(StreamDir, PathBuf)> {
        if !self.standby || !self.asks_for_a_segment(destination, kind) {
            return None;
        }
        let pgdata = std::env::current_dir().ok()?;
        let stream = StreamDir::of_data_dir(&pgdata);
        stream.is_enabled().then_some((stream, pgdata))
    }

    /// The records for `wale status` in `wal_dir` (resolved), kept only when PostgreSQL
    /// runs us.
    fn state(self, wal_dir: &Path) -> Option<FetchState> {
        self.postgres.then(|| FetchState::for_wal_dir(wal_dir))
    }
}

/// Logs a failed `wal-fetch`, records it for `wale status`, and gives its exit status
/// (the policy is [`exit::status`]'s).
///
/// "Not found" is recorded for a segment: recovery has read everything before it. Any
/// other failure is recorded too, and logged loudly; in standby mode (`standby.signal` in
/// the working directory, which PostgreSQL makes the data directory) the line says that
/// PostgreSQL will ask again.
pub fn settle(args: &WalFetchArgs, err: &Error) -> u8 {
    let caller = Caller::here();
    let state = caller.state(&wal_directory_of(&args.wal_destination));
    let line = err.to_string().replace('\n', " ");
    if err.is_not_found() {
        // A standby at the end of the archive asks every few seconds: say it once.
        let repeated = caller.standby
            && state
                .as_ref()
                .is_some_and(|s| s.answered_not_found_before(&args.wal_segment));
        if repeated {
            tracing::debug!("{line}");
        } else {
            tracing::info!("{line}");
        }
        if let (Some(state), WalFileKind::Segment(segment)) =
            (&state, WalFileKind::of(&args.wal_segment))
        {
            state.record_not_found(&segment);
        }
        promote_at_the_end_of_the_archive(args, caller);
        remove_stale(&args.wal_destination);
        return err.exit_status(exit::Caller::WalFetch);
    }
    let line = match err {
        Error::NoSpace { path, free, .. }
            if WalFileKind::of(&args.wal_segment).is_full_segment() =>
        {
            Error::NoSpace {
                path: path.clone(),
                free: *free,
                needed: Some(segment_size_here()),
            }
            .to_string()
        }
        _ => line,
    };
    let code = if caller.standby {
        let code = err.exit_status(exit::Caller::StandbyWalFetch);
        tracing::error!("{line} (standby mode: exiting {code} so that PostgreSQL asks again)");
        code
    } else {
        tracing::error!("{line}");
        err.exit_status(exit::Caller::WalFetch)
    };
    remove_stale(&args.wal_destination);
    if let Some(state) = &state {
        state.record_error(&line);
    }
    code
}

/// A recovery to the end of the archive runs as a standby of wale's WAL stream, which
/// promotes it there; when the stream is down and the archive has no next segment, this
/// `wal-fetch` asks for the promotion instead (what "not found" means to a recovery that
/// is not a standby).
fn promote_at_the_end_of_the_archive(args: &WalFetchArgs, caller: Caller) {
    let kind = WalFileKind::of(&args.wal_segment);
    let Some((stream, pgdata)) = caller.stream(&args.wal_destination, kind) else {
        return;
    };
    if !stream.promotes_at_end() {
        return;
    }
    match crate::pg::server::request_promotion(&pgdata) {
        Ok(()) => tracing::info!(
            "the archive ends before {}: promotion requested (this recovery ends at the archive's end)",
            args.wal_segment
        ),
        Err(err) => tracing::warn!("cannot request the promotion: {err}"),
    }
}

/// The WAL segment size of the data directory PostgreSQL runs us in (16 MiB elsewhere).
fn segment_size_here() -> u64 {
    std::fs::read("global/pg_control")
        .ok()
        .and_then(|bytes| crate::pg::control::ControlData::parse(&bytes).ok())
        .map_or(crate::wal::DEFAULT_SEGMENT_SIZE, |c| {
            u64::from(c.segment_size)
        })
}

/// The destination's directory must exist: PostgreSQL's `pg_wal` always does, and neither
/// the in-band nor the prefetch path may create one somewhere else.
fn check_destination_directory(destination: &Path) -> Result<(), Error> {
    let directory = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(directory) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::local(
            directory,
            "cannot write the WAL file into",
            std::io::Error::from(std::io::ErrorKind::NotADirectory),
        )),
        Err(e) => Err(Error::local(directory, "cannot write the WAL file into", e)),
    }
}

/// After a failure nothing may stay at the destination, not even an older file (WAL-E
/// deletes it too); PostgreSQL would otherwise replay whatever is there.
fn remove_stale(destination: &Path) {
    match std::fs::remove_file(destination) {
        Ok(()) => tracing::warn!("removed {} after the failed fetch", destination.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!("cannot remove {}: {err}", destination.display()),
    }
}

/// One attempt: download, decode and publish. Returns the decompressed size.
async fn fetch_once(
    store: &Store,
    key: &str,
    destination: &Path,
    kind: WalFileKind,
    decoding: &Decoding,
) -> Result<u64, Error> {
    let object = store.get(key).await?;
    let destination = destination.to_path_buf();
    let decoding = decoding.clone();
    tokio::task::spawn_blocking(move || decode_into(object, destination, kind, &decoding)).await?
}

fn decode_into(
    object: ObjectReader,
    destination: PathBuf,
    kind: WalFileKind,
    decoding: &Decoding,
) -> Result<u64, Error> {
    let url = object.url.clone();
    let mut staged = StagedFile::create(&destination)
        .map_err(|e| Error::local(&destination, "cannot create a file in its directory", e))?;
    let body = BufReader::with_capacity(
        BODY_BUFFER,
        object.into_blocking_read_ahead(SEGMENT_READ_AHEAD),
    );
    let mut decoder = decoding
        .decoder(body, &url)
        .map_err(|e| Error::from_read(&url, e))?;
    let mut tap = HeaderTap {
        inner: staged.early_writeback(),
        header: Vec::with_capacity(wal::LONG_PAGE_HEADER_SIZE),
    };
    let written = decoder
        .decode_to_on_two_threads(&mut tap)
        .map_err(|err| match err {
            DecodeToError::Decode(bad) => Error::from_decode(&url, bad),
            DecodeToError::Write(io) => Error::local(&destination, "cannot write", io),
        })?;
    let header = tap.header;
    if kind.is_full_segment() && !wal::is_valid_segment_size(written) {
        return Err(Error::corrupt(
            url,
            format!("decompressed to {written} bytes, which is not a WAL segment size"),
        ));
    }
    if let WalFileKind::Segment(segment) = kind
        && kind.is_full_segment()
    {
        wal::check_page_header(&header, &segment, written)
            .map_err(|why| Error::corrupt(url.clone(), why))?;
    }
    if is_restore_scratch(&destination) {
        staged
            .publish()
            .map_err(|e| Error::local(&destination, "cannot rename into place", e))?;
    } else {
        staged
            .commit()
            .map_err(|e| Error::local(&destination, "cannot fsync and rename into place", e))?;
    }
    Ok(written)
}

/// A writer that keeps the first bytes written: a segment's page header, checked before
/// the file is published (the prefetcher checks its files the same way).
struct HeaderTap<W> {
    inner: W,
    header: Vec<u8>,
}

impl<W: std::io::Write> std::io::Write for HeaderTap<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        let wanted = wal::LONG_PAGE_HEADER_SIZE.saturating_sub(self.header.len());
        self.header.extend_from_slice(&buf[..written.min(wanted)]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Whether `destination` is PostgreSQL's own scratch name, which it makes durable itself
/// when it keeps the file (see [`wal::is_restore_scratch_name`]); any other destination
/// is fsynced before it appears.
fn is_restore_scratch(destination: &Path) -> bool {
    destination
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(wal::is_restore_scratch_name)
}
