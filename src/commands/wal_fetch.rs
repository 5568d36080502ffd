//! `wal-fetch WAL_SEGMENT WAL_DESTINATION`: PostgreSQL's `restore_command`.
//!
//! GET `wal_005/<name>.lzo` → lzop decode (every checksum verified) → an invisible staged
//! file beside the destination → fsync → atomic rename. The destination either does not
//! change or holds the complete, verified file. Transient storage failures retry the whole
//! pipeline; a missing object is the only outcome that exits 1.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cli::WalFetchArgs;
use crate::commands::Options;
use crate::config::Config;
use crate::durable::StagedFile;
use crate::error::{Error, exit};
use crate::fetch_state::FetchState;
use crate::layout::Layout;
use crate::lzop::{self, DecodeToError};
use crate::prefetch::PrefetchDir;
use crate::storage::{self, ObjectReader, Storage, Store};
use crate::wal::{self, SegmentName, WalFileKind};

use super::wal_prefetch;

/// Buffer over the object: the decoder's header reads are a few bytes each, which on a
/// `file://` object would each be a system call (network bodies are already read ahead).
const BODY_BUFFER: usize = 256 * 1024;

/// How much of the object may be downloaded ahead of decoding: all of a 16 MiB segment
/// that did not compress at all.
const WAL_READ_AHEAD: usize = 16 * 1024 * 1024;

pub async fn run(config: &Config, options: &Options, args: &WalFetchArgs) -> Result<(), Error> {
    let name = &args.wal_segment;
    wal::check_archive_name(name).map_err(|why| Error::Usage(format!("{name:?}: {why}")))?;
    let kind = WalFileKind::of(name);
    let started = Instant::now();
    let prefetching = match kind {
        WalFileKind::Segment(segment) if args.prefetch > 0 => {
            Some(Prefetching::new(config, args, segment))
        }
        _ => None,
    };
    if let Some(prefetching) = &prefetching
        && let Some(size) = prefetching
            .take(&args.wal_destination, options, args.prefetch)
            .await
    {
        if let Some(state) = state_of(args) {
            state.clear_error();
        }
        tracing::info!(
            "restored {name} from the prefetch area ({size} bytes in {} ms)",
            started.elapsed().as_millis()
        );
        return Ok(());
    }
    let store = Store::open(&config.store).await?;
    let key = Layout::new(config.store.path_prefix()).wal_key(name);
    let what = format!("wal-fetch {name}");
    let bytes = crate::retry::with_retries(&config.retry, &what, || {
        fetch_once(&store, &key, &args.wal_destination, kind, options.lzop)
    })
    .await
    .inspect_err(|_| remove_stale(&args.wal_destination))?;
    if let Some(prefetching) = &prefetching {
        prefetching.learned_size(bytes);
    }
    if let Some(state) = state_of(args) {
        state.clear_error();
    }
    tracing::info!(
        "restored {name} from {} ({bytes} bytes in {} ms)",
        store.url(&key),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// The exit status for a failed `wal-fetch`, and what `wale status` will read about it.
///
/// "Not found" is 1, and for a segment it is recorded: recovery has read everything
/// before it. Any other failure is recorded, and then:
/// * in standby mode (`standby.signal` in the working directory, which PostgreSQL makes
///   the data directory) it exits 1 as well, loudly: a standby tries again a few seconds
///   later, whereas a status above 125 would shut it down;
/// * otherwise it exits above 125, usage and configuration errors included, so that
///   archive recovery stops rather than ends and promotes at the wrong point.
pub fn settle(args: &WalFetchArgs, err: &Error) -> u8 {
    let state = state_of(args);
    if err.is_not_found() {
        if let (Some(state), WalFileKind::Segment(segment)) =
            (&state, WalFileKind::of(&args.wal_segment))
        {
            state.record_not_found(&segment);
        }
        return exit::NOT_FOUND;
    }
    if let Some(state) = &state {
        state.record_error(&err.to_string().replace('\n', " "));
    }
    if in_standby_mode() {
        tracing::error!(
            "standby mode: exiting 1 so that PostgreSQL asks again in a few seconds (the failure above would otherwise shut the standby down)"
        );
        return exit::NOT_FOUND;
    }
    match err.exit_code() {
        exit::USAGE => exit::WAL_FETCH_USAGE,
        code => code,
    }
}

/// Whether PostgreSQL runs this `restore_command` for a standby: it runs it in the data
/// directory, which then holds `standby.signal`.
fn in_standby_mode() -> bool {
    Path::new("standby.signal").is_file() && Path::new("PG_VERSION").is_file()
}

/// The records for `wale status`, kept only when PostgreSQL runs us (in its data
/// directory).
fn state_of(args: &WalFetchArgs) -> Option<FetchState> {
    Path::new("PG_VERSION")
        .is_file()
        .then(|| FetchState::for_wal_dir(&base_directory(&args.wal_destination)))
}

/// The prefetch side of one `wal-fetch` of a segment.
struct Prefetching {
    area: PrefetchDir,
    /// The resolved directory of the destination (what `wal-prefetch` is given).
    base: PathBuf,
    segment: SegmentName,
}

impl Prefetching {
    /// The prefetch area for this destination (nothing is touched yet; any problem with
    /// it later only disables prefetching for this call).
    fn new(config: &Config, args: &WalFetchArgs, segment: SegmentName) -> Prefetching {
        let base = base_directory(&args.wal_destination);
        let area = PrefetchDir::for_base(&base, config.prefetch.dir.as_deref());
        Prefetching {
            area,
            base,
            segment,
        }
    }

    /// Hands over the prefetched segment (waiting for its download if one is under way,
    /// rather than starting a second) and tells the prefetcher, starting it if none runs,
    /// what comes next. Returns the size when the segment came from the area.
    async fn take(&self, destination: &Path, options: &Options, window: u32) -> Option<u64> {
        let take = || match self.area.take(&self.segment, destination) {
            Ok(taken) => taken,
            Err(err) => {
                // E.g. WALE_PREFETCH_DIR on another file system: the rename cannot work.
                tracing::warn!(
                    "cannot move the prefetched segment from {} to {}: {err} (the prefetch directory must be on the file system of the WAL directory); fetching directly",
                    self.area.root().display(),
                    destination.display()
                );
                None
            }
        };
        let mut taken = take();
        // Wait only for a download a live prefetcher has under way (one killed mid-way
        // leaves a partial file that will never grow).
        if taken.is_none()
            && self.area.partial_size(&self.segment).is_some()
            && self.area.prefetcher_running()
        {
            let size = self
                .area
                .next()
                .map_or(wal::DEFAULT_SEGMENT_SIZE, |(_, s)| s);
            self.announce(self.segment, size, options, window);
            if wal_prefetch::wait_for(&self.area, &self.segment).await {
                taken = take();
            }
        }
        if taken.is_none()
            && let Some(reason) = self.area.take_failure(&self.segment)
        {
            tracing::warn!(
                "the prefetcher could not fetch {}: {reason}; fetching it directly",
                self.segment
            );
        }
        let size = taken.unwrap_or_else(|| {
            self.area
                .next()
                .map_or(wal::DEFAULT_SEGMENT_SIZE, |(_, s)| s)
        });
        self.announce(self.segment.next(size), size, options, window);
        taken
    }

    fn announce(&self, next: SegmentName, size: u64, options: &Options, window: u32) {
        // On the hit path the area exists; it is created only when writing fails.
        let written = self.area.set_next(&next, size).or_else(|_| {
            self.area.create()?;
            self.area.set_next(&next, size)
        });
        if let Err(err) = written {
            tracing::warn!(
                "prefetching off: cannot write to {}: {err}",
                self.area.root().display()
            );
            return;
        }
        wal_prefetch::ensure_running(&self.area, &self.base, &next, window, &options.relaunch);
    }

    /// After an in-band fetch: the real segment size, for the prefetcher's arithmetic.
    fn learned_size(&self, size: u64) {
        if wal::is_valid_segment_size(size) && self.area.next().map(|(_, s)| s) != Some(size) {
            let _ = self.area.set_next(&self.segment.next(size), size);
        }
    }
}

/// The directory holding the destination, resolved (what `wal-prefetch` is given).
fn base_directory(destination: &Path) -> PathBuf {
    let parent = match destination.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf())
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
    lzop_options: lzop::Options,
) -> Result<u64, Error> {
    let object = store.get(key).await?;
    let destination = destination.to_path_buf();
    tokio::task::spawn_blocking(move || decode_into(object, destination, kind, lzop_options))
        .await?
}

fn decode_into(
    object: ObjectReader,
    destination: PathBuf,
    kind: WalFileKind,
    lzop_options: lzop::Options,
) -> Result<u64, Error> {
    let url = object.url.clone();
    let mut staged = StagedFile::create(&destination)
        .map_err(|e| Error::local(&destination, "cannot create a file in its directory", e))?;
    let body =
        BufReader::with_capacity(BODY_BUFFER, object.into_blocking_read_ahead(WAL_READ_AHEAD));
    let mut decoder = lzop::Decoder::with_options(body, lzop_options);
    let written = decoder
        .decode_to_on_two_threads(&mut staged.early_writeback())
        .map_err(|err| match err {
            DecodeToError::Decode(lzop::Error::Read(io)) => {
                Error::Storage(storage::Error::Transient {
                    url: url.clone(),
                    detail: format!("reading the object failed: {io}"),
                })
            }
            DecodeToError::Decode(bad) => Error::Corrupt {
                url: url.clone(),
                reason: bad.to_string(),
            },
            DecodeToError::Write(io) => Error::local(&destination, "cannot write", io),
        })?;
    if kind.is_full_segment() && !wal::is_valid_segment_size(written) {
        return Err(Error::Corrupt {
            url,
            reason: format!("decompressed to {written} bytes, which is not a WAL segment size"),
        });
    }
    staged
        .commit()
        .map_err(|e| Error::local(&destination, "cannot fsync and rename into place", e))?;
    Ok(written)
}
