//! The LZO1X block codec, kept behind one function so the choice can change in one place.
//!
//! Chosen by `benches/lzo_decode.rs`, which decodes the same real lzop files with every
//! candidate and with `lzop -d` (liblzo2) in one run: `lzallright` (MIT, safe Rust) was the
//! fastest and never panicked on corrupted blocks; see the README for the numbers.

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
    match lzallright::decompress(src, dst) {
        Ok(n) if n == dst.len() => Ok(()),
        Ok(n) => Err(CodecError(format!(
            "decompressed to {n} bytes instead of {}",
            dst.len()
        ))),
        Err(err) => Err(CodecError(format!("{:?}", err.kind()))),
    }
}
