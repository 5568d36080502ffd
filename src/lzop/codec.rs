//! The LZO1X block codec, kept behind one function so the choice can change in one place.
//!
//! `benches/micro.rs` decodes the same real WAL-E objects with every candidate and with
//! `lzop -d` (liblzo2) in one run. wale's own decoder ([`super::lzo1x`]) replaced the
//! `lzallright` crate: as fast on busy data, three times faster on the long runs of a
//! mostly-zero segment (see the README's benchmarks).

use std::fmt;

/// Why a block failed to decompress.
#[derive(Debug)]
pub struct CodecError(String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

/// Decompresses one LZO1X block into `dst`, which must come out exactly full: lzop
/// records each block's decompressed length, and anything else means corruption.
pub fn decompress_block(src: &[u8], dst: &mut [u8]) -> Result<(), CodecError> {
    super::lzo1x::decompress(src, dst).map_err(|err| CodecError(err.to_string()))
}
