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
use crate::error::Error;
use crate::layout::Layout;
use crate::lzop::{self, DecodeToError};
use crate::storage::{self, ObjectReader, Storage, Store};
use crate::wal::{self, WalFileKind};

/// Read-ahead for the network body: one lzop block, so the decoder's small header reads
/// do not each cross from the blocking thread to the runtime.
const BODY_BUFFER: usize = 256 * 1024;

pub async fn run(config: &Config, options: Options, args: &WalFetchArgs) -> Result<(), Error> {
    let name = &args.wal_segment;
    wal::check_archive_name(name).map_err(|why| Error::Usage(format!("{name:?}: {why}")))?;
    let kind = WalFileKind::of(name);
    let started = Instant::now();
    let store = Store::open(&config.store).await?;
    let key = Layout::new(config.store.path_prefix()).wal_key(name);
    let what = format!("wal-fetch {name}");
    let bytes = crate::retry::with_retries(&config.retry, &what, || {
        fetch_once(&store, &key, &args.wal_destination, kind, options.lzop)
    })
    .await
    .inspect_err(|_| remove_stale(&args.wal_destination))?;
    tracing::info!(
        "restored {name} from {} ({bytes} bytes in {} ms)",
        store.url(&key),
        started.elapsed().as_millis()
    );
    Ok(())
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
    let body = BufReader::with_capacity(BODY_BUFFER, object.into_blocking_read());
    let mut decoder = lzop::Decoder::with_options(body, lzop_options);
    let written = decoder.decode_to(staged.file()).map_err(|err| match err {
        DecodeToError::Decode(lzop::Error::Read(io)) => Error::Storage(storage::Error::Transient {
            url: url.clone(),
            detail: format!("reading the object failed: {io}"),
        }),
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
