//! Questions about a WAL-E archive that take more than one object or more than a read:
//! the long page header of a segment (which names the cluster and its segment size) and
//! the oldest segment the archive holds. Commands ask here rather than each reading the
//! archive its own way.

use std::io::{BufReader, Read};

use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::Layout;
use crate::retry::with_retries;
use crate::storage::{self, Storage, Store};
use crate::wal::{LONG_PAGE_HEADER_SIZE, LongPageHeader, SegmentName};

/// The long page header at the start of `segment`, checked to belong to that segment
/// (its address and timeline). A missing object is [`Error::NotFound`].
pub async fn segment_header(
    config: &Config,
    store: &Store,
    layout: &Layout,
    segment: &SegmentName,
    decoding: &Decoding,
) -> Result<LongPageHeader, Error> {
    let name = segment.to_string();
    let key = layout.wal_key(&name);
    let url = store.url(&key);
    let bytes = with_retries(&config.retry, "read a WAL segment's first page", || async {
        let object = match store.get(&key).await {
            Err(storage::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!("{url}: not in the archive")));
            }
            other => other?,
        };
        let (decoding, object_url) = (decoding.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let mut decoder =
                decoding.decoder(BufReader::new(object.into_blocking_read()), &object_url)?;
            let mut header = [0u8; LONG_PAGE_HEADER_SIZE];
            decoder.read_exact(&mut header).map(|()| header)
        })
        .await?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Corrupt {
                url: url.clone(),
                reason: format!("cannot read its first page: {e}"),
            },
            _ => Error::from_read(&url, e),
        })
    })
    .await?;
    let header = LongPageHeader::parse(&bytes).map_err(|reason| Error::Corrupt {
        url: url.clone(),
        reason,
    })?;
    let size = u64::from(header.segment_size);
    if crate::wal::is_valid_segment_size(size)
        && (header.page_address != segment.start_lsn(size) || header.timeline != segment.timeline)
    {
        return Err(Error::Corrupt {
            url,
            reason: format!(
                "its first page is for timeline {} at {}, not {name}: the object is another segment",
                header.timeline, header.page_address
            ),
        });
    }
    Ok(header)
}

/// The oldest WAL segment in the archive (lowest timeline, then position), if any.
pub async fn oldest_segment(
    config: &Config,
    store: &Store,
    layout: &Layout,
) -> Result<Option<SegmentName>, Error> {
    let prefix = layout.wal_dir();
    let mut after = prefix.clone();
    loop {
        let page = with_retries(&config.retry, "list WAL", || {
            store.list_after(&prefix, &after, store.listing_page())
        })
        .await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        after = last.key.clone();
        let first = page.iter().find_map(|object| {
            object.key[prefix.len()..]
                .strip_suffix(".lzo")
                .and_then(SegmentName::parse)
        });
        if first.is_some() {
            return Ok(first);
        }
    }
}
