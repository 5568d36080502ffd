//! Where the stream's WAL comes from: the archive's segments and timeline history files,
//! fetched and decoded whole into memory (every lzop checksum verified), each segment
//! checked against the cluster it is streamed to before a byte of it is sent.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::{Config, RetryPolicy};
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::Layout;
use crate::retry::with_retries;
use crate::storage::{SEGMENT_READ_AHEAD, Storage, Store};
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
    /// The newest timeline the server follows (`recovery_target_timeline`); no probe
    /// goes past it.
    timeline_goal: u32,
    /// The stream's one turn on the CPU, process-wide: one segment decoded, or one sent
    /// to the walreceiver (which writes it as it comes), at a time, while downloads run
    /// ahead. The stream's work then wants one core at most and leaves the other to
    /// replay: decoding several segments at once, or the next while the walreceiver
    /// wrote the last, made replay wait for a core.
    turn: Arc<Semaphore>,
}

impl ArchiveWal {
    /// Opens the store for the cluster whose identity and segment size are given, for a
    /// server that follows timelines up to `timeline_goal` (`None`: the newest).
    pub async fn open(
        config: &Config,
        decoding: &Decoding,
        system_identifier: u64,
        segment_size: u64,
        timeline_goal: Option<u32>,
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
            timeline_goal: timeline_goal.unwrap_or(u32::MAX),
            turn: Arc::new(Semaphore::new(1)),
        })
    }

    /// A segment, decoded and checked: its size, its first page's timeline and address,
    /// and the system identifier. "Not found" is [`Error::is_not_found`]. The object
    /// downloads at once; its decoding waits for the stream's turn.
    pub async fn segment(&self, segment: SegmentName) -> Result<Vec<u8>, Error> {
        let name = segment.to_string();
        let key = self.layout.wal_key(&name);
        let size = self.segment_size;
        let (bytes, url) = with_retries(&self.retry, &format!("stream {name}"), || async {
            let object = self.store.get(&key).await?;
            let url = object.url.clone();
            let body = object.into_blocking_read_ahead(SEGMENT_READ_AHEAD);
            let _turn = self.turn().await;
            let bytes = self
                .decoding
                .decode_whole(url.clone(), body, size as usize, size + 1)
                .await?;
            Ok::<_, Error>((bytes, url))
        })
        .await?;
        self.check_segment(&segment, &bytes)
            .map_err(|why| Error::corrupt(url, why))?;
        Ok(bytes)
    }

    /// Waits for the stream's turn on the CPU (see the field); held until dropped.
    pub async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.turn
            .acquire()
            .await
            .expect("the turn's semaphore is never closed")
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
    /// file in the archive (PostgreSQL's own probe, `findNewestTimeLine`), or the server's
    /// goal if that comes first (`recovery_target_timeline` `current` or a number).
    pub async fn newest_timeline(&self, known: u32) -> Result<u32, Error> {
        let mut newest = known;
        while newest < self.timeline_goal
            && crate::archive::has_history(&self.store, &self.layout, &self.retry, newest + 1)
                .await?
        {
            newest += 1;
        }
        Ok(newest)
    }

    /// Downloads and decodes one small object of `wal_005/` (a history file) whole,
    /// with retries of transient failures. Returns its bytes and its URL.
    async fn fetch(&self, name: &str) -> Result<(Vec<u8>, String), Error> {
        let key = self.layout.wal_key(name);
        let what = format!("stream {name}");
        let size = self.segment_size;
        with_retries(&self.retry, &what, || async {
            let object = self.store.get(&key).await?;
            let url = object.url.clone();
            let bytes = self.decoding.read_whole(object, 4096, size + 1).await?;
            Ok((bytes, url))
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
