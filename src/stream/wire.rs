//! The wire protocol of wale's WAL stream: PostgreSQL's frontend/backend framing and
//! messages (the `pgwire` crate's message layer) plus the streaming replication payloads
//! carried in CopyData, which that layer leaves to the caller: XLogData (`w`) and the
//! primary keepalive (`k`) going out, the standby's status update (`r`) and hot-standby
//! feedback (`h`) coming in.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::copy::{CopyBothResponse, CopyData, CopyDone};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::{DecodeContext, PgWireBackendMessage as Backend, PgWireFrontendMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use pgwire::messages::PgWireFrontendMessage as Frontend;

use crate::wal::Lsn;

/// The largest WAL payload of one XLogData message (PostgreSQL's walsender sends at
/// most 128 KiB at a time too).
pub const MAX_WAL_PAYLOAD: usize = 128 * 1024;

/// Frontend messages from one connection, decoded as they arrive.
pub struct MessageReader<R> {
    io: R,
    buffer: BytesMut,
    context: DecodeContext,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// A reader at the start of a connection (SSL/GSS requests or the startup packet).
    pub fn new(io: R) -> MessageReader<R> {
        MessageReader {
            io,
            buffer: BytesMut::with_capacity(8 * 1024),
            context: DecodeContext::default(),
        }
    }

    /// The next message; `None` when the client closed the connection.
    pub async fn next(&mut self) -> io::Result<Option<Frontend>> {
        loop {
            let decoded = Frontend::decode(&mut self.buffer, &self.context)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match decoded {
                Some(PgWireFrontendMessage::SslNegotiation(
                    pgwire::messages::SslNegotiationMetaMessage::None,
                )) => {
                    // Neither SSL nor GSS asked for: the startup packet comes next.
                    self.context.awaiting_frontend_ssl = false;
                }
                Some(message) => {
                    if matches!(message, Frontend::Startup(_)) {
                        self.context.awaiting_frontend_ssl = false;
                        self.context.awaiting_frontend_startup = false;
                    }
                    return Ok(Some(message));
                }
                None => {
                    if self.io.read_buf(&mut self.buffer).await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Backend messages to one connection, gathered and written in one go.
pub struct MessageWriter<W> {
    io: W,
    buffer: BytesMut,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    /// A writer over `io`.
    pub fn new(io: W) -> MessageWriter<W> {
        MessageWriter {
            io,
            buffer: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Queues one message.
    pub fn push(&mut self, message: Backend) -> io::Result<()> {
        message
            .encode(&mut self.buffer)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Queues the one-byte answer to an SSL or GSS encryption request: not here (the
    /// socket is local).
    pub fn push_refusal(&mut self) {
        self.buffer.put_u8(b'N');
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.write_all(&self.buffer).await?;
        self.buffer.clear();
        self.io.flush().await
    }

    /// Sends an error (severity ERROR, SQLSTATE `code`) and, outside COPY, makes the
    /// connection ready for the next command.
    pub async fn error(&mut self, code: &str, message: &str, ready: bool) -> io::Result<()> {
        self.push(error_response(code, message))?;
        if ready {
            self.push(ready_for_query())?;
        }
        self.flush().await
    }

    /// Sends XLogData, `wal` (at most [`MAX_WAL_PAYLOAD`]) starting at `start` with the
    /// end of WAL known to the sender, after whatever is queued. The payload goes from
    /// `wal` to the socket as it is, in one vectored write with the framing: copying every
    /// segment twice more (into the message, then into the buffer) took CPU from the
    /// cores replay needs.
    pub async fn send_wal(&mut self, start: Lsn, wal_end: Lsn, wal: &[u8]) -> io::Result<()> {
        const FRAMING: usize = 4 + 1 + 8 + 8 + 8;
        debug_assert!(
            wal.len() <= MAX_WAL_PAYLOAD,
            "XLogData of {} bytes",
            wal.len()
        );
        self.buffer.put_u8(b'd');
        self.buffer.put_i32((FRAMING + wal.len()) as i32);
        self.buffer.put_u8(b'w');
        self.buffer.put_u64(start.0);
        self.buffer.put_u64(wal_end.0);
        self.buffer.put_i64(now_postgres_micros());
        write_all_of_two(&mut self.io, &self.buffer, wal).await?;
        self.buffer.clear();
        self.io.flush().await
    }

    /// Queues a primary keepalive; `reply` asks the standby to answer at once.
    pub fn push_keepalive(&mut self, wal_end: Lsn, reply: bool) -> io::Result<()> {
        let mut payload = BytesMut::with_capacity(18);
        payload.put_u8(b'k');
        payload.put_u64(wal_end.0);
        payload.put_i64(now_postgres_micros());
        payload.put_u8(u8::from(reply));
        self.push(Backend::CopyData(CopyData::new(payload.freeze())))
    }

    /// Queues the start of COPY BOTH (streaming).
    pub fn push_copy_both(&mut self) -> io::Result<()> {
        self.push(Backend::CopyBothResponse(CopyBothResponse::new(
            0,
            0,
            vec![],
        )))
    }

    /// Queues the end of this side's COPY.
    pub fn push_copy_done(&mut self) -> io::Result<()> {
        self.push(Backend::CopyDone(CopyDone::new()))
    }

    /// Queues one result set of text columns: `columns` as (name, type), then one row.
    pub fn push_row(&mut self, columns: &[(&str, u32)], row: &[Option<&[u8]>]) -> io::Result<()> {
        let fields = columns
            .iter()
            .map(|&(name, type_id)| {
                FieldDescription::new(name.to_string(), 0, 0, type_id, -1, -1, 0)
            })
            .collect();
        self.push(Backend::RowDescription(RowDescription::new(fields)))?;
        let mut data = BytesMut::new();
        for value in row {
            match value {
                Some(bytes) => {
                    data.put_i32(bytes.len() as i32);
                    data.put_slice(bytes);
                }
                None => data.put_i32(-1),
            }
        }
        self.push(Backend::DataRow(DataRow::new(data, row.len() as i16)))
    }

    /// Queues CommandComplete with `tag`.
    pub fn push_complete(&mut self, tag: &str) -> io::Result<()> {
        self.push(Backend::CommandComplete(CommandComplete::new(
            tag.to_string(),
        )))
    }

    /// Queues ReadyForQuery (idle).
    pub fn push_ready(&mut self) -> io::Result<()> {
        self.push(ready_for_query())
    }
}

/// Column types (type OIDs) of the replication commands' answers.
pub mod column {
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `int4`.
    pub const INT4: u32 = 23;
    /// `int8`.
    pub const INT8: u32 = 20;
}

fn ready_for_query() -> Backend {
    Backend::ReadyForQuery(ReadyForQuery::new(TransactionStatus::Idle))
}

fn error_response(code: &str, message: &str) -> Backend {
    Backend::ErrorResponse(ErrorResponse::new(vec![
        (b'S', "ERROR".to_string()),
        (b'V', "ERROR".to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ]))
}

/// What a standby sends inside COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    /// A status update: positions written, flushed and replayed; whether it wants an
    /// answer now.
    Status {
        /// Written to disk.
        write: Lsn,
        /// Flushed to disk.
        flush: Lsn,
        /// Replayed.
        apply: Lsn,
        /// Asks for a keepalive at once.
        reply_requested: bool,
    },
    /// Hot-standby feedback, or anything else: nothing to do for an archive.
    Other,
}

impl StandbyMessage {
    /// Parses a CopyData payload from the standby.
    pub fn parse(payload: &Bytes) -> StandbyMessage {
        let mut bytes = payload.clone();
        if bytes.first() != Some(&b'r') || bytes.len() < 34 {
            return StandbyMessage::Other;
        }
        bytes.advance(1);
        let write = Lsn(bytes.get_u64());
        let flush = Lsn(bytes.get_u64());
        let apply = Lsn(bytes.get_u64());
        let _sent_at = bytes.get_i64();
        let reply_requested = bytes.get_u8() != 0;
        StandbyMessage::Status {
            write,
            flush,
            apply,
            reply_requested,
        }
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
fn now_postgres_micros() -> i64 {
    const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000
}

/// Writes all of `head` then all of `body`, in as few vectored writes as the socket takes.
async fn write_all_of_two<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut head: &[u8],
    mut body: &[u8],
) -> io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let written = io
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = &body[written - from_head..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn xlogdata_and_keepalive_have_the_documented_layout() {
        let mut out = Vec::new();
        let mut writer = MessageWriter::new(&mut out);
        writer.push_keepalive(Lsn(7), true).unwrap();
        writer
            .send_wal(Lsn(0x1_0000_0000), Lsn(0x2_0000_0000), b"abc")
            .await
            .unwrap();
        assert!(writer.buffer.is_empty());
        let keepalive = &out[..23];
        assert_eq!(keepalive[0], b'd');
        assert_eq!(
            u32::from_be_bytes(keepalive[1..5].try_into().unwrap()),
            4 + 18
        );
        assert_eq!(keepalive[5], b'k');
        assert_eq!(&keepalive[6..14], &7u64.to_be_bytes());
        assert_eq!(keepalive[22], 1);
        let bytes = &out[23..];
        assert_eq!(bytes.len(), 1 + 4 + 25 + 3);
        assert_eq!(bytes[0], b'd');
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
            4 + 25 + 3
        );
        assert_eq!(bytes[5], b'w');
        assert_eq!(&bytes[6..14], &0x1_0000_0000u64.to_be_bytes());
        assert_eq!(&bytes[14..22], &0x2_0000_0000u64.to_be_bytes());
        assert_eq!(&bytes[30..33], b"abc");
    }

    /// A socket that takes a few bytes per write: the framing and the payload still go
    /// out whole and in order.
    #[tokio::test]
    async fn xlogdata_survives_short_writes() {
        let (client, mut server) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let wal: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut writer = MessageWriter::new(client);
        writer.send_wal(Lsn(1), Lsn(2), &wal).await.unwrap();
        drop(writer);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 30 + wal.len());
        assert_eq!(&got[30..], &wal[..]);
    }

    #[test]
    fn a_status_update_is_parsed_and_anything_else_ignored() {
        let mut payload = BytesMut::new();
        payload.put_u8(b'r');
        payload.put_u64(3);
        payload.put_u64(2);
        payload.put_u64(1);
        payload.put_i64(0);
        payload.put_u8(1);
        assert_eq!(
            StandbyMessage::parse(&payload.freeze()),
            StandbyMessage::Status {
                write: Lsn(3),
                flush: Lsn(2),
                apply: Lsn(1),
                reply_requested: true
            }
        );
        assert_eq!(
            StandbyMessage::parse(&Bytes::from_static(b"h123")),
            StandbyMessage::Other
        );
    }

    #[tokio::test]
    async fn a_startup_packet_after_a_refused_ssl_request_is_read() {
        let mut packet = BytesMut::new();
        packet.put_i32(8);
        packet.put_i32(80877103);
        let mut startup = BytesMut::new();
        startup.put_i32(196608);
        for text in ["user", "postgres", "replication", "true", ""] {
            startup.put_slice(text.as_bytes());
            startup.put_u8(0);
        }
        startup.put_u8(0);
        packet.put_i32(startup.len() as i32 + 4);
        packet.put_slice(&startup);
        let bytes = packet.freeze();
        let mut reader = MessageReader::new(&bytes[..]);
        assert!(matches!(
            reader.next().await.unwrap(),
            Some(Frontend::SslNegotiation(_))
        ));
        match reader.next().await.unwrap() {
            Some(Frontend::Startup(startup)) => {
                assert_eq!(startup.parameters.get("replication").unwrap(), "true");
            }
            other => panic!("{other:?}"),
        }
        assert!(reader.next().await.unwrap().is_none());
    }
}
