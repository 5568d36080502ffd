//! Where the archive lives: one small [`Storage`] trait (stream an object, list with a
//! prefix and delimiter, head) and its backends: S3 ([`s3`]), Google Cloud Storage
//! ([`gcs`]), Azure Blob Storage ([`azure`]), OpenStack Swift ([`swift`]) and local files
//! ([`fs`]). The GCS, Azure and Swift backends share one small HTTP client (`web`).
//!
//! Keys are WAL-E's "logical keys" (`<path_prefix>wal_005/…`, never starting with `/`);
//! each backend maps them to its own physical names. Errors are classified once, here:
//! [`Error::NotFound`] only for a real 404 or `ENOENT` of the object asked for, and
//! [`Error::is_retryable`] only for failures that can pass (5xx, throttling, timeouts,
//! resets, truncated bodies).

pub mod azure;
pub mod fs;
pub mod gcs;
pub mod s3;
pub mod swift;
mod web;

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{RetryPolicy, StoreConfig};
use crate::time::{civil_utc, unix_from_civil};

/// A storage failure, naming the object (as a URL) it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist (HTTP 404 `NoSuchKey`, or `ENOENT`).
    #[error("{url}: not found")]
    NotFound {
        /// The object.
        url: String,
    },
    /// The store refused: bad or expired credentials, missing permission.
    #[error("{url}: access denied: {detail}")]
    AccessDenied {
        /// The object or bucket.
        url: String,
        /// The store's own explanation.
        detail: String,
    },
    /// A failure that may pass if tried again.
    #[error("{url}: {detail}")]
    Transient {
        /// The object or bucket.
        url: String,
        /// What happened.
        detail: String,
    },
    /// The store could not be reached at all (connection refused, name not resolved, no
    /// route): it may come back, but an interactive command should not wait long for it.
    #[error("{url}: {detail}")]
    Unreachable {
        /// The object or bucket.
        url: String,
        /// What happened, in a few words.
        detail: String,
    },
    /// A failure that will not pass by itself (missing bucket, wrong region, archived object…).
    #[error("{url}: {detail}")]
    Permanent {
        /// The object or bucket.
        url: String,
        /// What happened.
        detail: String,
    },
}

impl Error {
    /// The same failure with what was being done put before its detail.
    pub fn explained(self, doing: &str) -> Error {
        match self {
            Error::AccessDenied { url, detail } => Error::AccessDenied {
                url,
                detail: format!("{doing}: {detail}"),
            },
            Error::Transient { url, detail } => Error::Transient {
                url,
                detail: format!("{doing}: {detail}"),
            },
            Error::Unreachable { url, detail } => Error::Unreachable {
                url,
                detail: format!("{doing}: {detail}"),
            },
            Error::Permanent { url, detail } => Error::Permanent {
                url,
                detail: format!("{doing}: {detail}"),
            },
            Error::NotFound { url } => Error::Permanent {
                url,
                detail: format!("{doing}: not found"),
            },
        }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Unreachable { .. })
    }
}

impl crate::retry::Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }

    fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    /// Its logical key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, for ordering.
    pub modified: SystemTime,
    /// Last modification time as WAL-E prints it for this backend (S3:
    /// `2026-11-25T00:48:14.253Z`; file: Python's naive-UTC `isoformat()`).
    pub last_modified_text: String,
}

/// The result of listing with a delimiter: objects at this level, and the "directories".
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects whose key has no delimiter after the prefix, sorted by key.
    pub objects: Vec<ObjectMeta>,
    /// Distinct `prefix + … + delimiter` groups below the prefix, sorted.
    pub common_prefixes: Vec<String>,
}

impl Listing {
    /// The listing in the order the contract promises whatever the store sent: objects by
    /// key, prefixes sorted without repeats.
    pub fn sorted(mut self) -> Listing {
        self.objects.sort_by(|a, b| a.key.cmp(&b.key));
        self.common_prefixes.sort();
        self.common_prefixes.dedup();
        self
    }
}

/// An object being read.
pub struct ObjectReader {
    /// The object, as a URL for messages.
    pub url: String,
    /// Its size, when the store said.
    pub size: Option<u64>,
    body: Body,
}

enum Body {
    /// A network body, read on the async runtime.
    Async(Pin<Box<dyn AsyncRead + Send>>),
    /// A local file, read directly.
    File(std::fs::File),
}

impl ObjectReader {
    /// Turns the body into a blocking reader for the decoders, to be used on a blocking
    /// thread of the runtime (`spawn_blocking`). Network bodies are bridged and checked
    /// against the announced size, so a connection that closes early is an error.
    pub fn into_blocking_read(self) -> Box<dyn Read + Send> {
        self.into_blocking_read_ahead(DEFAULT_READ_AHEAD)
    }

    /// Like [`ObjectReader::into_blocking_read`], downloading up to `read_ahead` bytes
    /// ahead of the reader. `wal-fetch` lets the whole object come in at network speed:
    /// the sooner the connection is done, the sooner decoding has the cores to itself.
    pub fn into_blocking_read_ahead(self, read_ahead: usize) -> Box<dyn Read + Send> {
        match self.body {
            Body::File(file) => Box::new(file),
            Body::Async(body) => {
                let checked = LengthChecked {
                    inner: body,
                    expected: self.size,
                    seen: 0,
                };
                Box::new(ReadAhead::spawn(checked, read_ahead))
            }
        }
    }
}

/// How much of a network body the reading task gathers before handing it over: one
/// hand-over (two thread wake-ups) per quarter megabyte rather than per socket read.
const HANDOFF_BYTES: usize = 256 * 1024;
/// How far a body is read ahead of its reader by default: the memory bound per body.
const DEFAULT_READ_AHEAD: usize = 1024 * 1024;
/// How far a WAL segment's object may be read ahead of its decoding
/// ([`ObjectReader::into_blocking_read_ahead`]): all of a 16 MiB segment that did not
/// compress, so that its download ends at network speed (`wal-fetch`) or while earlier
/// segments are decoded (the WAL stream).
pub const SEGMENT_READ_AHEAD: usize = 16 * 1024 * 1024;

/// A blocking reader fed by a task on the runtime that reads the network body ahead, so
/// that downloading overlaps decoding and the blocking side is woken once per chunk.
struct ReadAhead {
    chunks: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
    ended: bool,
}

impl ReadAhead {
    /// Starts the reading task; needs the runtime's context (as on a blocking thread).
    /// The task stops when the body ends, fails, or this reader is dropped. The end is
    /// sent as an empty chunk, so a task that vanished is an error, never a short body.
    fn spawn(mut body: LengthChecked, read_ahead: usize) -> ReadAhead {
        let depth = (read_ahead / HANDOFF_BYTES).max(1);
        let (sender, chunks) = tokio::sync::mpsc::channel(depth);
        tokio::spawn(async move {
            loop {
                let mut chunk = bytes::BytesMut::with_capacity(HANDOFF_BYTES);
                let filled = fill(&mut body, &mut chunk).await;
                let ended = !matches!(filled, Ok(false));
                if !chunk.is_empty() && sender.send(Ok(chunk.freeze())).await.is_err() {
                    return;
                }
                if ended {
                    let last = filled.map(|_| bytes::Bytes::new());
                    let _ = sender.send(last).await;
                    return;
                }
            }
        });
        ReadAhead {
            chunks,
            current: bytes::Bytes::new(),
            ended: false,
        }
    }
}

/// Reads until `chunk` is full (false) or the body ends (true).
async fn fill(body: &mut LengthChecked, chunk: &mut bytes::BytesMut) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    while chunk.len() < HANDOFF_BYTES {
        if body.read_buf(chunk).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() && !self.ended {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => self.ended = true,
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => {
                    return Err(io::Error::other(
                        "the download stopped before the end of the body",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// Fails with `UnexpectedEof` when a body ends before its announced length.
struct LengthChecked {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    expected: Option<u64>,
    seen: u64,
}

impl AsyncRead for LengthChecked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = self.inner.as_mut().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let got = (buf.filled().len() - before) as u64;
            self.seen += got;
            if got == 0
                && buf.remaining() > 0
                && let Some(expected) = self.expected.filter(|&e| self.seen < e)
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {expected} bytes", self.seen),
                )));
            }
        }
        res
    }
}

/// The three operations wale needs from a store.
pub trait Storage {
    /// Opens an object for streaming.
    fn get(&self, key: &str) -> impl Future<Output = Result<ObjectReader, Error>> + Send;
    /// Opens an object for streaming from byte `offset` on (to resume a broken read).
    fn get_range(
        &self,
        key: &str,
        offset: u64,
    ) -> impl Future<Output = Result<ObjectReader, Error>> + Send;
    /// Lists keys under `prefix`, grouping at `delimiter` when given.
    fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> impl Future<Output = Result<Listing, Error>> + Send;
    /// One page of a flat listing: at most `limit` objects directly under `prefix` whose
    /// keys sort after `start_after`, in key order. Walking a long listing (all of
    /// `wal_005/`) page by page from a known key keeps its cost to what is read.
    fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ObjectMeta>, Error>> + Send;
    /// Size and modification time of one object.
    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectMeta, Error>> + Send;
    /// A URL naming `key`, for messages.
    fn url(&self, key: &str) -> String;
}

/// A walk through the objects directly under a prefix, in key order, a page at a time:
/// what [`Store::page`] reads next. A remote store is asked for each page from the last key
/// seen; a local directory is read and sorted once for the whole walk (reading it again
/// for every page made a walk's cost grow with the square of the directory's length), so
/// objects that appear during the walk may be missed, as in a listing taken at its start.
pub struct PageWalk {
    prefix: String,
    after: String,
    page_size: usize,
    local_names: Arc<std::sync::OnceLock<fs::Names>>,
}

impl PageWalk {
    /// The largest page this walk asks for; a shorter page is the last.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Moves the walk past `key`, the last object of the page just read.
    pub fn advance_past(&mut self, key: &str) {
        key.clone_into(&mut self.after);
    }
}

/// The configured store.
pub enum Store {
    /// Amazon S3 or a compatible server.
    S3(s3::S3Store),
    /// Google Cloud Storage (or its emulator).
    Gcs(gcs::GcsStore),
    /// Azure Blob Storage (or Azurite).
    Azure(azure::AzureStore),
    /// OpenStack Swift.
    Swift(swift::SwiftStore),
    /// Local files (`file://`).
    File(fs::FileStore),
}

impl Store {
    /// The page size that walks a long listing cheapest: S3 answers at most 1000 keys a
    /// request, Azure 5000, Swift 10 000; GCS 1000 too, but its pages start at the last key
    /// seen, so 999 new ones fit in one request; a local directory is read once per walk, and
    /// its pages of ten thousand names are only what is stat'ed at a time.
    pub fn listing_page(&self) -> usize {
        match self {
            Store::S3(_) => 1000,
            Store::Gcs(_) => 999,
            Store::Azure(_) => 5000,
            Store::Swift(_) => swift::PAGE_LIMIT,
            Store::File(_) => 10_000,
        }
    }

    /// A walk through the objects directly under `prefix` whose keys sort after
    /// `start_after`, `page_size` at a time (see [`Store::listing_page`]).
    pub fn walk(&self, prefix: &str, start_after: &str, page_size: usize) -> PageWalk {
        PageWalk {
            prefix: prefix.to_string(),
            after: start_after.to_string(),
            page_size,
            local_names: Arc::default(),
        }
    }

    /// The walk's next page (empty at its end); [`PageWalk::advance_past`] moves it on.
    pub async fn page(&self, walk: &PageWalk) -> Result<Vec<ObjectMeta>, Error> {
        match self {
            Store::File(s) => {
                s.page(&walk.local_names, &walk.prefix, &walk.after, walk.page_size)
                    .await
            }
            _ => {
                self.list_after(&walk.prefix, &walk.after, walk.page_size)
                    .await
            }
        }
    }

    /// Connects to the configured store. For S3 this builds the client from explicit
    /// settings (no instance-metadata probing unless an instance profile was asked for)
    /// and, only when neither `AWS_REGION` nor an endpoint is set, asks S3 for the
    /// bucket's region.
    pub async fn open(config: &StoreConfig) -> Result<Store, Error> {
        match config {
            StoreConfig::S3(s3) => Ok(Store::S3(s3::S3Store::connect(s3).await?)),
            StoreConfig::Gcs(gcs) => Ok(Store::Gcs(gcs::GcsStore::connect(gcs)?)),
            StoreConfig::Azure(azure) => Ok(Store::Azure(azure::AzureStore::connect(azure))),
            StoreConfig::Swift(swift) => Ok(Store::Swift(swift::SwiftStore::connect(swift))),
            StoreConfig::File(file) => {
                // A prefix naming no directory (a typo, `file://tmp/…` read as a host) is
                // a configuration mistake, never an empty archive.
                let root = std::path::Path::new("/").join(&file.path_prefix);
                let url = format!("file://{}", root.display());
                match std::fs::metadata(&root) {
                    Ok(meta) if meta.is_dir() => Ok(Store::File(fs::FileStore)),
                    Ok(_) => Err(Error::Permanent {
                        url,
                        detail: "not a directory (check the prefix)".into(),
                    }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Permanent {
                        url,
                        detail: "the archive directory does not exist (check the prefix)".into(),
                    }),
                    Err(e) => Err(Error::AccessDenied {
                        url,
                        detail: format!("{e} (as user id {})", crate::users::effective_uid()),
                    }),
                }
            }
        }
    }
}

impl Storage for Store {
    async fn get(&self, key: &str) -> Result<ObjectReader, Error> {
        match self {
            Store::S3(s) => s.get(key).await,
            Store::Gcs(s) => s.get(key).await,
            Store::Azure(s) => s.get(key).await,
            Store::Swift(s) => s.get(key).await,
            Store::File(s) => s.get(key).await,
        }
    }

    async fn get_range(&self, key: &str, offset: u64) -> Result<ObjectReader, Error> {
        match self {
            Store::S3(s) => s.get_range(key, offset).await,
            Store::Gcs(s) => s.get_range(key, offset).await,
            Store::Azure(s) => s.get_range(key, offset).await,
            Store::Swift(s) => s.get_range(key, offset).await,
            Store::File(s) => s.get_range(key, offset).await,
        }
    }

    async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, Error> {
        match self {
            Store::S3(s) => s.list(prefix, delimiter).await,
            Store::Gcs(s) => s.list(prefix, delimiter).await,
            Store::Azure(s) => s.list(prefix, delimiter).await,
            Store::Swift(s) => s.list(prefix, delimiter).await,
            Store::File(s) => s.list(prefix, delimiter).await,
        }
    }

    async fn list_after(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, Error> {
        match self {
            Store::S3(s) => s.list_after(prefix, start_after, limit).await,
            Store::Gcs(s) => s.list_after(prefix, start_after, limit).await,
            Store::Azure(s) => s.list_after(prefix, start_after, limit).await,
            Store::Swift(s) => s.list_after(prefix, start_after, limit).await,
            Store::File(s) => s.list_after(prefix, start_after, limit).await,
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        match self {
            Store::S3(s) => s.head(key).await,
            Store::Gcs(s) => s.head(key).await,
            Store::Azure(s) => s.head(key).await,
            Store::Swift(s) => s.head(key).await,
            Store::File(s) => s.head(key).await,
        }
    }

    fn url(&self, key: &str) -> String {
        match self {
            Store::S3(s) => s.url(key),
            Store::Gcs(s) => s.url(key),
            Store::Azure(s) => s.url(key),
            Store::Swift(s) => s.url(key),
            Store::File(s) => s.url(key),
        }
    }
}

/// A blocking reader over a whole object that survives broken connections: when a read
/// fails part-way, it asks the store for the rest (an HTTP range from the current offset)
/// and carries on, within the retry policy. The consumer (lzop, tar) never notices, so a
/// retried partition neither restarts nor writes anything twice.
pub struct ResumingReader {
    store: Arc<Store>,
    key: String,
    url: String,
    inner: Box<dyn Read + Send>,
    offset: u64,
    budget: crate::retry::Backoff,
    runtime: tokio::runtime::Handle,
}

impl ResumingReader {
    /// Wraps an object opened with [`Storage::get`]; must be read on a blocking thread.
    pub fn new(store: Arc<Store>, key: &str, first: ObjectReader, retry: RetryPolicy) -> Self {
        ResumingReader {
            store,
            key: key.to_string(),
            url: first.url.clone(),
            inner: first.into_blocking_read(),
            offset: 0,
            budget: crate::retry::Backoff::new(&retry),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Reopens the object at the current offset after `err`, or gives up with it.
    fn resume(&mut self, mut err: io::Error) -> io::Result<()> {
        loop {
            let Some(delay) = self.budget.next_delay() else {
                return Err(err);
            };
            tracing::warn!(
                "{}: read failed at byte {} ({err}); resuming from there in {:.1}s",
                self.url,
                self.offset,
                delay.as_secs_f64()
            );
            std::thread::sleep(delay);
            match self
                .runtime
                .block_on(self.store.get_range(&self.key, self.offset))
            {
                Ok(reader) => {
                    self.inner = reader.into_blocking_read();
                    return Ok(());
                }
                Err(storage_err) if storage_err.is_retryable() => {
                    err = io::Error::other(storage_err);
                }
                Err(storage_err) => return Err(io::Error::other(storage_err)),
            }
        }
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    if n > 0 && self.budget.failures() > 0 {
                        // Progress since the last failure: the budget starts afresh.
                        self.budget.reset();
                    }
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => self.resume(err)?,
            }
        }
    }
}

/// The messages of an error and its sources, joined, without the `Debug` dump the SDK's
/// own context printer appends.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The last two messages of an error's source chain: where a connection failed and why
/// (`tcp connect error: Connection refused (os error 111)`, `dns error: failed to lookup
/// address information: …`).
pub(crate) fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    let from = chain.len().saturating_sub(2);
    chain[from..].join(": ")
}

/// Whether nothing answers at the endpoint: refused, unknown host, no route. A timeout or
/// a reset is not this: the store is there and may be busy.
pub(crate) fn refuses_connections(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        if e.to_string().starts_with("dns error") {
            return true;
        }
        next = e.source();
    }
    false
}

/// Parses the RFC 3339 UTC times cloud APIs send (`2026-11-30T12:29:01.900289Z`, with or
/// without a fraction, `Z` or `+00:00`).
pub(crate) fn parse_rfc3339_utc(text: &str) -> Option<SystemTime> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once(['T', ' '])?;
    let mut date_parts = date.splitn(3, '-').map(|p| p.parse::<u32>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.splitn(3, ':').map(|p| p.parse::<u32>().ok());
    let (h, mi, s) = (
        clock_parts.next()??,
        clock_parts.next()??,
        clock_parts.next()??,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    let secs = unix_from_civil(i64::from(year), month, day, h * 3600 + mi * 60 + s);
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// A UTC time as Python prints an aware `datetime` (`str()`), as WAL-E's `backup-list`
/// showed Google's and Azure's times: `2026-11-30 12:29:01.900289+00:00`, the fraction
/// only when there is one (and never with `whole_seconds`).
pub(crate) fn python_utc_text(t: SystemTime, whole_seconds: bool) -> String {
    let (secs, nanos) = unix_parts(t);
    let (y, mo, d, h, mi, s) = civil_utc(secs);
    let micros = nanos / 1000;
    if whole_seconds || micros == 0 {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}+00:00")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{micros:06}+00:00")
    }
}

/// Seconds and nanoseconds since the epoch (negative times clamp to the epoch).
pub(crate) fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network-like body: `data` in pieces of `piece` bytes, then either its end or,
    /// with `stall`, nothing ever again (a connection that hangs).
    struct Pieces {
        data: Vec<u8>,
        piece: usize,
        stall: bool,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.data.is_empty() && self.stall {
                return Poll::Pending;
            }
            let n = self.piece.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    fn read_ahead(body: Pieces, announced: u64, rt: &tokio::runtime::Runtime) -> ReadAhead {
        let checked = LengthChecked {
            inner: Box::pin(body),
            expected: Some(announced),
            seen: 0,
        };
        let _context = rt.enter();
        ReadAhead::spawn(checked, 2 * HANDOFF_BYTES)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap()
    }

    #[test]
    fn read_ahead_delivers_the_body_in_order_then_its_end() {
        let data: Vec<u8> = (0..3 * HANDOFF_BYTES + 777)
            .map(|i| (i % 253) as u8)
            .collect();
        let rt = runtime();
        let body = Pieces {
            data: data.clone(),
            piece: 10_000,
            stall: false,
        };
        let mut reader = read_ahead(body, data.len() as u64, &rt);
        let mut got = Vec::new();
        let mut small = [0u8; 4099];
        loop {
            let n = reader.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert!(got == data, "the body came out changed");
        assert_eq!(reader.read(&mut small).unwrap(), 0, "the end is sticky");
    }

    #[test]
    fn read_ahead_reports_a_short_body_after_its_bytes() {
        let rt = runtime();
        let body = Pieces {
            data: vec![7; 1000],
            piece: 300,
            stall: false,
        };
        let mut reader = read_ahead(body, 5000, &rt);
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, vec![7; 1000]);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("1000 of 5000"), "{err}");
    }

    #[test]
    fn read_ahead_whose_task_is_gone_is_an_error_not_an_end() {
        // The runtime shuts down while the body hangs: the reading task is dropped
        // without sending the end, and the reader must not mistake that for one.
        let rt = runtime();
        let body = Pieces {
            data: vec![1; 100],
            piece: 100,
            stall: true,
        };
        let mut reader = read_ahead(body, 200, &rt);
        drop(rt);
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).unwrap_err();
        assert!(err.to_string().contains("stopped before the end"), "{err}");
    }

    #[test]
    fn cloud_times_parse_and_print_as_wal_e_showed_them() {
        let t = parse_rfc3339_utc("2026-11-24T22:58:50.900289Z").unwrap();
        assert_eq!(unix_parts(t), (1_795_561_130, 900_289_000));
        assert_eq!(
            python_utc_text(t, false),
            "2026-11-24 22:58:50.900289+00:00"
        );
        assert_eq!(python_utc_text(t, true), "2026-11-24 22:58:50+00:00");
        let whole = parse_rfc3339_utc("2026-11-24T22:58:50+00:00").unwrap();
        assert_eq!(python_utc_text(whole, false), "2026-11-24 22:58:50+00:00");
        for bad in [
            "",
            "2026-11-24",
            "2026-13-01T00:00:00Z",
            "2026-11-24T22:58:50.x1Z",
            "2026-11-24T22:58:50",
        ] {
            assert!(parse_rfc3339_utc(bad).is_none(), "{bad}");
        }
    }
}
