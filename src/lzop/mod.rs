//! Streaming decoder for the lzop container that wraps every WAL-E object.
//!
//! WAL-E pipes each WAL file and each tar partition through `lzop -c`, so every object is
//! one lzop member: a header (lzop 1.04's format), then blocks of at most
//! 256 KiB of output each, each with an Adler-32 of its decompressed bytes, then a zero
//! end marker. This module reads that container from any [`Read`] and hands out the
//! decompressed bytes, verifying every checksum the header's flags announce before a byte
//! of a block is released. Memory is bounded by one block (at most 64 MiB, lzop's own
//! limit; 256 KiB in practice), whatever the size of the object.
//!
//! What it deliberately does not do: undo lzop's delta filter (never used by WAL-E;
//! refused with a clear error), or read multi-member streams unless asked to, because
//! WAL-E itself fails on them (`lzop -d` exits 2).

pub mod lzo1x;

use std::io::{self, Read, Write};

/// The nine bytes every lzop file starts with.
pub const MAGIC: [u8; 9] = [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

/// lzop's own cap on one block's uncompressed size (`MAX_BLOCK_SIZE`).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024 * 1024;

/// The newest format revision this decoder understands (lzop 1.04).
const SUPPORTED_VERSION_NEEDED: u16 = 0x1040;

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
/// Every flag bit lzop defines: the low bits plus the charset and OS fields.
const F_KNOWN: u32 = 0x0000_3FFF | 0x00F0_0000 | 0xFF00_0000;

/// Everything that can be wrong with an lzop stream, apart from failing to read it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying reader failed (network, disk); the data itself may be fine.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// The stream does not start with the lzop magic.
    #[error("not an lzop stream (bad magic{})", if *.encrypted { "; it looks like OpenPGP-encrypted data" } else { "" })]
    NotLzop {
        /// Whether the first byte looks like an OpenPGP packet (a GPG-encrypted WAL-E object).
        encrypted: bool,
    },
    /// The stream ended before the end marker.
    #[error("truncated lzop stream: ended inside {0}")]
    Truncated(&'static str),
    /// A structural field holds a value lzop itself would reject.
    #[error("corrupt lzop stream: {0}")]
    Corrupt(String),
    /// A stored checksum does not match the data.
    #[error(
        "lzop {what} checksum mismatch in block {block}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    Checksum {
        /// Which checksum failed (header, Adler-32 of data, …).
        what: &'static str,
        /// Zero-based index of the block, or 0 for the header.
        block: u64,
        /// The value found in the stream.
        stored: u32,
        /// The value computed over the bytes.
        computed: u32,
    },
    /// A valid stream that uses a feature this decoder refuses on purpose.
    #[error("unsupported lzop stream: {0}")]
    Unsupported(String),
}

impl Error {
    /// Whether retrying the read could help: only failures of the source, never bad data.
    pub fn is_source_failure(&self) -> bool {
        matches!(self, Error::Read(_))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Read(inner) => inner,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Choices a caller can make about streams WAL-E itself would not produce.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Decode further lzop members that follow the first one (lzop outputs them but exits 2,
    /// and WAL-E fails). Off by default.
    pub allow_concatenated: bool,
}

/// The fields of an lzop header that matter after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// lzop version that wrote the stream, e.g. 0x1040.
    pub version: u16,
    /// Compression method: 1, 2 (LZO1X-1) or 3 (LZO1X-999); all decode the same way.
    pub method: u8,
    /// Flag word (checksum selection, OS, …).
    pub flags: u32,
    /// File mode of the input, 0 for a pipe.
    pub mode: u32,
    /// Modification time of the input in seconds since the epoch.
    pub mtime: u64,
    /// Stored file name, empty for stdin input.
    pub name: Vec<u8>,
}

/// Reads and verifies one lzop stream, yielding its decompressed bytes through [`Read`].
pub struct Decoder<R> {
    src: R,
    options: Options,
    header: Option<Header>,
    /// The current block as stored (its buffer is reused; grows to the largest block).
    raw: RawBlock,
    /// Decompressed bytes of the current block, verified, not yet handed out.
    block: Vec<u8>,
    /// How much of `block` has been handed out.
    block_pos: usize,
    /// Index of the next block, for error messages.
    block_index: u64,
    finished: bool,
    /// Total decompressed bytes produced so far.
    produced: u64,
}

impl<R: Read> Decoder<R> {
    /// Wraps a reader positioned at the start of an lzop stream.
    pub fn new(src: R) -> Self {
        Self::with_options(src, Options::default())
    }

    /// Like [`Decoder::new`], with explicit [`Options`].
    pub fn with_options(src: R, options: Options) -> Self {
        Decoder {
            src,
            options,
            header: None,
            raw: RawBlock::default(),
            block: Vec::new(),
            block_pos: 0,
            block_index: 0,
            finished: false,
            produced: 0,
        }
    }

    /// The parsed header, once the first read has happened.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Decodes the whole stream into `out`, one verified block at a time, and returns the
    /// number of bytes written. Faster than [`io::copy`] because blocks are written whole.
    pub fn decode_to<W: Write>(&mut self, out: &mut W) -> Result<u64, DecodeToError> {
        let start = self.produced - (self.block.len() - self.block_pos) as u64;
        loop {
            if self.block_pos < self.block.len() {
                out.write_all(&self.block[self.block_pos..])
                    .map_err(DecodeToError::Write)?;
                self.block_pos = self.block.len();
            }
            if !self.next_block()? {
                return Ok(self.produced - start);
            }
        }
    }

    /// Like [`Decoder::decode_to`] (same checks, same output), decoding every other block
    /// on a second thread while this one decodes and writes the rest: blocks are
    /// independent, and a restore_command waits for the whole segment. Must be called
    /// before anything was read.
    pub fn decode_to_on_two_threads<W: Write>(
        &mut self,
        out: &mut W,
    ) -> Result<u64, DecodeToError> {
        debug_assert_eq!(self.produced, 0, "decode_to_on_two_threads after a read");
        std::thread::scope(|scope| {
            // Created inside the scope: an early return drops `to_helper`, which ends the
            // helper's loop before the scope waits for it.
            let (to_helper, helper_in) = std::sync::mpsc::sync_channel::<(RawBlock, Vec<u8>)>(1);
            let (helper_out, from_helper) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for (mut raw, mut block) in helper_in {
                    let decoded = raw.decode_into(&mut block);
                    if helper_out.send((decoded, raw, block)).is_err() {
                        return;
                    }
                }
            });
            // Two block buffers and two stored-block buffers circulate; none is
            // allocated per block.
            let mut spare = (RawBlock::default(), Vec::new());
            loop {
                if !self.next_raw()? {
                    return Ok(self.produced);
                }
                let paired = self.next_raw_into(&mut spare.0)?;
                if paired {
                    to_helper
                        .send(std::mem::take(&mut spare))
                        .expect("the helper lives until the channel closes");
                }
                self.raw.decode_into(&mut self.block)?;
                out.write_all(&self.block).map_err(DecodeToError::Write)?;
                self.produced += self.block.len() as u64;
                if paired {
                    let (decoded, raw, block) = from_helper.recv().expect("the helper answers");
                    decoded?;
                    out.write_all(&block).map_err(DecodeToError::Write)?;
                    self.produced += block.len() as u64;
                    spare = (raw, block);
                }
            }
        })
    }

    /// Loads the next verified block into `self.block`; false at the end of the stream.
    fn next_block(&mut self) -> Result<bool, Error> {
        if !self.next_raw()? {
            return Ok(false);
        }
        self.block_pos = 0;
        self.raw.decode_into(&mut self.block)?;
        self.produced += self.block.len() as u64;
        Ok(true)
    }

    /// Reads the next block as stored into `self.raw`; false at the end of the stream.
    fn next_raw(&mut self) -> Result<bool, Error> {
        let mut raw = std::mem::take(&mut self.raw);
        let more = self.next_raw_into(&mut raw);
        self.raw = raw;
        more
    }

    /// Reads the next block as stored into `raw`, past member ends; false at the end.
    fn next_raw_into(&mut self, raw: &mut RawBlock) -> Result<bool, Error> {
        if self.finished {
            return Ok(false);
        }
        if self.header.is_none() {
            self.header = Some(read_header(&mut self.src)?);
        }
        loop {
            let flags = self.header.as_ref().map_or(0, |h| h.flags);
            match self.read_raw_block(flags, raw)? {
                true => return Ok(true),
                false => {
                    if self.read_trailer()? {
                        // Another member follows and the caller allowed it.
                        self.header = Some(read_header_after_magic(&mut self.src)?);
                        continue;
                    }
                    self.finished = true;
                    return Ok(false);
                }
            }
        }
    }

    /// Reads one block as stored into `raw`; false when it was the end marker.
    fn read_raw_block(&mut self, flags: u32, raw: &mut RawBlock) -> Result<bool, Error> {
        let index = self.block_index;
        let dst_len = read_u32(&mut self.src, "a block header")?;
        if dst_len == 0 {
            return Ok(false);
        }
        if dst_len == u32::MAX {
            return Err(Error::Unsupported(
                "split lzop files are not supported".into(),
            ));
        }
        if dst_len > MAX_BLOCK_SIZE {
            return Err(Error::Corrupt(format!(
                "block {index} claims {dst_len} bytes, more than lzop's limit of {MAX_BLOCK_SIZE}"
            )));
        }
        let src_len = read_u32(&mut self.src, "a block header")?;
        if src_len == 0 || src_len > dst_len {
            return Err(Error::Corrupt(format!(
                "block {index} has compressed size {src_len} for {dst_len} bytes of data"
            )));
        }
        let compressed = src_len < dst_len;
        raw.index = index;
        raw.dst_len = dst_len as usize;
        raw.d_adler = read_opt(&mut self.src, flags & F_ADLER32_D != 0)?;
        raw.d_crc = read_opt(&mut self.src, flags & F_CRC32_D != 0)?;
        raw.c_adler = read_opt(&mut self.src, compressed && flags & F_ADLER32_C != 0)?;
        raw.c_crc = read_opt(&mut self.src, compressed && flags & F_CRC32_C != 0)?;
        raw.packed.resize(src_len as usize, 0);
        read_exact(&mut self.src, &mut raw.packed, "block data")?;
        self.block_index += 1;
        Ok(true)
    }

    /// Looks at what follows an end marker. Accepts end of stream and NUL padding (as lzop
    /// does); returns true when another member follows and that is allowed.
    fn read_trailer(&mut self) -> Result<bool, Error> {
        let mut first = [0u8; 1];
        if read_full(&mut self.src, &mut first)? == 0 {
            return Ok(false);
        }
        if first[0] == MAGIC[0] {
            let mut rest = [0u8; MAGIC.len() - 1];
            let got = read_full(&mut self.src, &mut rest)?;
            if got == rest.len() && rest == MAGIC[1..] {
                if self.options.allow_concatenated {
                    return Ok(true);
                }
                return Err(Error::Unsupported(
                    "several lzop members are concatenated in one object (WAL-E never writes that)"
                        .into(),
                ));
            }
            return Err(Error::Corrupt(
                "trailing garbage after the end marker".into(),
            ));
        }
        if first[0] != 0 {
            return Err(Error::Corrupt(
                "trailing garbage after the end marker".into(),
            ));
        }
        let mut buf = [0u8; 4096];
        loop {
            let got = read_full(&mut self.src, &mut buf)?;
            if buf[..got].iter().any(|&b| b != 0) {
                return Err(Error::Corrupt(
                    "trailing garbage after the end marker".into(),
                ));
            }
            if got < buf.len() {
                return Ok(false);
            }
        }
    }
}

/// One block as stored: its bytes (compressed, or stored as is when that was not
/// smaller) and the checksums the header announced, not yet verified.
#[derive(Default)]
struct RawBlock {
    index: u64,
    packed: Vec<u8>,
    dst_len: usize,
    d_adler: Option<u32>,
    d_crc: Option<u32>,
    c_adler: Option<u32>,
    c_crc: Option<u32>,
}

impl RawBlock {
    /// Verifies the block and puts its decompressed bytes in `out`. A stored block's
    /// buffer is swapped into `out` rather than copied (`packed` gets `out`'s old one).
    fn decode_into(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let index = self.index;
        if self.packed.len() < self.dst_len {
            out.resize(self.dst_len, 0);
            verify(index, "Adler-32 of compressed data", self.c_adler, || {
                adler32(&self.packed)
            })?;
            verify(index, "CRC-32 of compressed data", self.c_crc, || {
                crc32(&self.packed)
            })?;
            lzo1x::decompress(&self.packed, out).map_err(|err| {
                Error::Corrupt(format!("block {index} does not decompress: {err}"))
            })?;
        } else {
            std::mem::swap(&mut self.packed, out);
        }
        verify(index, "Adler-32 of data", self.d_adler, || adler32(out))?;
        verify(index, "CRC-32 of data", self.d_crc, || crc32(out))
    }
}

/// Failure of [`Decoder::decode_to`]: either the stream or the sink.
#[derive(Debug, thiserror::Error)]
pub enum DecodeToError {
    /// The lzop stream could not be read or is invalid.
    #[error(transparent)]
    Decode(#[from] Error),
    /// Writing the decompressed bytes failed.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.block_pos == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.block_pos);
        buf[..n].copy_from_slice(&self.block[self.block_pos..self.block_pos + n]);
        self.block_pos += n;
        Ok(n)
    }
}

/// Parses the header, magic included, verifying its checksum.
pub fn read_header<R: Read>(src: &mut R) -> Result<Header, Error> {
    let mut magic = [0u8; MAGIC.len()];
    let got = read_full(src, &mut magic)?;
    if got < magic.len() || magic != MAGIC {
        return Err(Error::NotLzop {
            encrypted: got > 0 && looks_like_openpgp(magic[0]),
        });
    }
    read_header_after_magic(src)
}

/// An OpenPGP binary message starts with a packet tag byte with bit 7 set (PKESK is 0x84–0x87
/// in the old format or 0xC1 in the new one); lzop's 0x89 was ruled out before this is asked.
pub fn looks_like_openpgp(first: u8) -> bool {
    matches!(first, 0x84..=0x87 | 0xC1 | 0xC3)
}

/// Parses the header fields after the magic, verifying the header checksum.
fn read_header_after_magic<R: Read>(src: &mut R) -> Result<Header, Error> {
    let mut h = HeaderReader {
        src,
        seen: Vec::with_capacity(64),
    };
    let version = h.u16()?;
    let _lib_version = h.u16()?;
    if version < 0x0900 {
        return Err(Error::Corrupt(format!(
            "header version {version:#06x} is too old"
        )));
    }
    if version >= 0x0940 {
        let needed = h.u16()?;
        if needed > SUPPORTED_VERSION_NEEDED {
            return Err(Error::Unsupported(format!(
                "written for lzop {needed:#06x}, newer than the supported {SUPPORTED_VERSION_NEEDED:#06x}"
            )));
        }
    }
    let method = h.u8()?;
    if !(1..=3).contains(&method) {
        return Err(Error::Unsupported(format!(
            "compression method {method} (only LZO1X methods 1, 2 and 3 exist in lzop builds)"
        )));
    }
    if version >= 0x0940 {
        let level = h.u8()?;
        if level > 9 {
            return Err(Error::Corrupt(format!("compression level {level}")));
        }
    }
    let flags = h.u32()?;
    if flags & !F_KNOWN != 0 {
        return Err(Error::Corrupt(format!(
            "unknown header flags {flags:#010x}"
        )));
    }
    if flags & F_H_FILTER != 0 {
        let filter = h.u32()?;
        return Err(Error::Unsupported(format!(
            "lzop filter {filter} is set; WAL-E never uses filters and wale does not undo them"
        )));
    }
    let mode = h.u32()?;
    let mtime_low = h.u32()?;
    let mtime_high = if version >= 0x0940 { h.u32()? } else { 0 };
    let name_len = h.u8()? as usize;
    let mut name = vec![0u8; name_len];
    h.bytes(&mut name)?;

    let use_crc = flags & F_H_CRC32 != 0;
    let computed = if use_crc {
        crc32(&h.seen)
    } else {
        adler32(&h.seen)
    };
    let stored = read_u32(h.src, "the header")?;
    if stored != computed {
        return Err(Error::Checksum {
            what: "header",
            block: 0,
            stored,
            computed,
        });
    }
    if flags & F_H_EXTRA_FIELD != 0 {
        skip_extra_field(h.src, use_crc)?;
    }
    Ok(Header {
        version,
        method,
        flags,
        mode,
        mtime: (u64::from(mtime_high) << 32) | u64::from(mtime_low),
        name,
    })
}

/// The optional extra field: a length, that many bytes, and a checksum over both.
fn skip_extra_field<R: Read>(src: &mut R, use_crc: bool) -> Result<(), Error> {
    let len_bytes = read_array::<_, 4>(src, "the header extra field")?;
    let mut len = u32::from_be_bytes(len_bytes) as u64;
    let mut adler = simd_adler32::Adler32::new();
    let mut crc = crc32fast::Hasher::new();
    adler.write(&len_bytes);
    crc.update(&len_bytes);
    let mut buf = [0u8; 4096];
    while len > 0 {
        let chunk = len.min(buf.len() as u64) as usize;
        read_exact(src, &mut buf[..chunk], "the header extra field")?;
        adler.write(&buf[..chunk]);
        crc.update(&buf[..chunk]);
        len -= chunk as u64;
    }
    let computed = if use_crc {
        crc.finalize()
    } else {
        adler.finish()
    };
    let stored = read_u32(src, "the header extra field")?;
    if stored != computed {
        return Err(Error::Checksum {
            what: "header extra field",
            block: 0,
            stored,
            computed,
        });
    }
    Ok(())
}

/// Reads header fields while remembering their bytes for the header checksum.
struct HeaderReader<'a, R> {
    src: &'a mut R,
    seen: Vec<u8>,
}

impl<R: Read> HeaderReader<'_, R> {
    fn bytes(&mut self, out: &mut [u8]) -> Result<(), Error> {
        read_exact(self.src, out, "the header")?;
        self.seen.extend_from_slice(out);
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, Error> {
        let mut b = [0u8; 1];
        self.bytes(&mut b)?;
        Ok(b[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let mut b = [0u8; 2];
        self.bytes(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
}

fn verify(
    block: u64,
    what: &'static str,
    stored: Option<u32>,
    compute: impl FnOnce() -> u32,
) -> Result<(), Error> {
    if let Some(stored) = stored {
        let computed = compute();
        if stored != computed {
            return Err(Error::Checksum {
                what,
                block,
                stored,
                computed,
            });
        }
    }
    Ok(())
}

fn adler32(data: &[u8]) -> u32 {
    simd_adler32::adler32(&data)
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn read_opt<R: Read>(src: &mut R, present: bool) -> Result<Option<u32>, Error> {
    if present {
        Ok(Some(read_u32(src, "a block header")?))
    } else {
        Ok(None)
    }
}

fn read_u32<R: Read>(src: &mut R, inside: &'static str) -> Result<u32, Error> {
    Ok(u32::from_be_bytes(read_array::<_, 4>(src, inside)?))
}

fn read_array<R: Read, const N: usize>(
    src: &mut R,
    inside: &'static str,
) -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    read_exact(src, &mut b, inside)?;
    Ok(b)
}

fn read_exact<R: Read>(src: &mut R, out: &mut [u8], inside: &'static str) -> Result<(), Error> {
    if read_full(src, out)? < out.len() {
        return Err(Error::Truncated(inside));
    }
    Ok(())
}

/// Reads until `out` is full or the stream ends; returns how much was read.
fn read_full<R: Read>(src: &mut R, out: &mut [u8]) -> Result<usize, Error> {
    let mut filled = 0;
    while filled < out.len() {
        match src.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::Read(err)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests;
