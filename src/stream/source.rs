//! Where the stream's WAL comes from: the archive's segments and timeline history files,
//! fetched and decoded whole into memory (every lzop checksum verified), each segment
//! checked against the cluster it is streamed to before a byte of it is sent.

use std::io::BufReader;
use std::sync::Arc;

use crate::config::{Config, RetryPolicy};
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::Layout;
use crate::lzop::DecodeToError;
use crate::retry::with_retries;
use crate::storage::{self, Storage, Store};
use crate::wal::{self, LongPageHeader, SegmentName, TimelineSwitch};

/// The archive as the stream reads it.
#[derive(Clone)]
pub struct ArchiveWal {
    store: Arc<Store>,
    layout: Layout,
    decoding: Decoding,
    retry: RetryPolicy,
    /// The cluster's system identifier (`pg_control`): every segment must carry it.
    pub system_identifier: u64,
    /// The cluster's WAL segment size.
    pub segment_size: u64,
}

impl ArchiveWal {
    /// Opens the store for the cluster whose identity and segment size are given.
    pub async fn open(
        config: &Config,
        decoding: &Decoding,
        system_identifier: u64,
        segment_size: u64,
    ) -> Result<ArchiveWal, Error> {
        let mut retry = config.retry;
        // A stream keeps asking by itself; one attempt must not hold it for long.
        retry.deadline = retry.deadline.min(std::time::Duration::from_secs(30));
        Ok(ArchiveWal {
            store: Arc::new(Store::open(&config.store).await?),
            layout: Layout::new(config.store.path_prefix()),
            decoding: decoding.clone(),
            retry,
            system_identifier,
            segment_size,
        })
    }

    /// A segment, decoded and checked: its size, its first page's timeline and address,
    /// and the system identifier. "Not found" is [`Error::is_not_found`].
    pub async fn segment(&self, segment: SegmentName) -> Result<Vec<u8>, Error> {
        let name = segment.to_string();
        let (bytes, url) = self.fetch(&name).await?;
        self.check_segment(&segment, &bytes)
            .map_err(|why| Error::corrupt(url, why))?;
        Ok(bytes)
    }

    /// The history file of `timeline`, as archived; `None` when the archive has none.
    pub async fn history(&self, timeline: u32) -> Result<Option<Vec<u8>>, Error> {
        match self.fetch(&wal::history_file_name(timeline)).await {
            Ok((bytes, _)) => Ok(Some(bytes)),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The history of `timeline` parsed: where each ancestor ended (empty for 1).
    pub async fn switches(&self, timeline: u32) -> Result<Vec<TimelineSwitch>, Error> {
        if timeline <= 1 {
            return Ok(Vec::new());
        }
        let name = wal::history_file_name(timeline);
        let bytes = self.history(timeline).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "{name}: the archive has no history file for timeline {timeline}"
            ))
        })?;
        let url = self.store.url(&self.layout.wal_key(&name));
        wal::parse_history(&String::from_utf8_lossy(&bytes))
            .map_err(|why| Error::corrupt(url, format!("not a timeline history: {why}")))
    }

    /// The newest timeline from `known` on: the last one whose successor has no history
    /// file in the archive (PostgreSQL's own probe, `findNewestTimeLine`).
    pub async fn newest_timeline(&self, known: u32) -> Result<u32, Error> {
        let mut newest = known;
        loop {
            let key = self.layout.wal_key(&wal::history_file_name(newest + 1));
            match with_retries(&self.retry, "look for a newer timeline", || {
                self.store.head(&key)
            })
            .await
            {
                Ok(_) => newest += 1,
                Err(storage::Error::NotFound { .. }) => return Ok(newest),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Downloads and decodes one object of `wal_005/` whole, with retries of transient
    /// failures. Returns its bytes and its URL.
    async fn fetch(&self, name: &str) -> Result<(Vec<u8>, String), Error> {
        let key = self.layout.wal_key(name);
        let what = format!("stream {name}");
        with_retries(&self.retry, &what, || async {
            let object = self.store.get(&key).await?;
            let decoding = self.decoding.clone();
            let url = object.url.clone();
            let capacity = self.segment_size as usize;
            tokio::task::spawn_blocking(move || {
                let body = BufReader::with_capacity(256 * 1024, object.into_blocking_read());
                decode_whole(body, &url, &decoding, capacity).map(|bytes| (bytes, url))
            })
            .await?
        })
        .await
    }

    fn check_segment(&self, segment: &SegmentName, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.segment_size {
            return Err(format!(
                "decompressed to {} bytes, but this cluster's segments are {}",
                bytes.len(),
                self.segment_size
            ));
        }
        wal::check_page_header(bytes, segment, self.segment_size).map_err(|e| e.to_string())?;
        let header = LongPageHeader::parse(bytes).map_err(|e| e.to_string())?;
        if header.system_identifier != self.system_identifier {
            return Err(format!(
                "WAL of database system {}, not of this cluster ({})",
                header.system_identifier, self.system_identifier
            ));
        }
        Ok(())
    }
}

fn decode_whole(
    body: impl std::io::BufRead + Send + 'static,
    url: &str,
    decoding: &Decoding,
    capacity: usize,
) -> Result<Vec<u8>, Error> {
    let mut decoder = decoding
        .decoder(body, url)
        .map_err(|e| Error::from_read(url, e))?;
    let mut bytes = Vec::with_capacity(capacity);
    decoder.decode_to(&mut bytes).map_err(|err| match err {
        DecodeToError::Decode(bad) => Error::from_decode(url, bad),
        DecodeToError::Write(io) => Error::from_read(url, io),
    })?;
    Ok(bytes)
}
