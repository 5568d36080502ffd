//! LZO1X block decompression, written for lzop's blocks (at most 256 KiB out in WAL-E's
//! objects, 64 MiB by the format), from the format's public description (the Linux
//! kernel's `Documentation/staging/lzo.rst`).
//!
//! Why not a crate: `benches/micro.rs` measures the candidates on real WAL-E objects, and
//! every one (lzallright, `lzo`, lzokay-native) copied a match that overlaps its own
//! output (a run, `distance < 8`) one byte at a time. A WAL segment switched early is mostly zeros, one
//! long run after another, and decoded at a third of the speed of a busy one. Here an
//! overlapping match is copied by doubling: the bytes already written are a whole number
//! of periods of the pattern, so each step copies everything written so far in one go.
//!
//! Every read and write is bounds-checked and reported as [`Error`]: corrupt input never
//! panics and never writes outside `dst`.

use std::fmt;

/// Why a block is not valid LZO1X for its recorded size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The instructions run past the end of the compressed bytes.
    InputOverrun,
    /// The instructions would write past the recorded decompressed size.
    OutputOverrun,
    /// A match reaches back before the start of the block.
    LookbehindOverrun,
    /// The end marker came before the block was full.
    OutputUnderrun(usize),
    /// Bytes follow the end marker.
    TrailingInput,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InputOverrun => f.write_str("instructions run past the compressed data"),
            Error::OutputOverrun => f.write_str("output exceeds the recorded block size"),
            Error::LookbehindOverrun => f.write_str("a match reaches before the block start"),
            Error::OutputUnderrun(n) => write!(f, "ended after {n} bytes, short of the block"),
            Error::TrailingInput => f.write_str("data follows the end marker"),
        }
    }
}

impl std::error::Error for Error {}

/// Decompresses `src` into `dst`, which it must fill exactly.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> Result<(), Error> {
    let mut block = Block {
        src,
        dst,
        ip: 0,
        op: 0,
    };
    block.run()?;
    if block.op != block.dst.len() {
        return Err(Error::OutputUnderrun(block.op));
    }
    if block.ip != block.src.len() {
        return Err(Error::TrailingInput);
    }
    Ok(())
}

/// The decoder's position in both buffers.
struct Block<'a> {
    src: &'a [u8],
    dst: &'a mut [u8],
    ip: usize,
    op: usize,
}

/// The width of the fixed copies on the fast paths.
const WIDE: usize = 16;

/// After a match: how many literals the previous instruction copied (0–3), or 4 for a
/// literal run; it decides what opcodes 0–15 mean.
type State = usize;

impl Block<'_> {
    fn run(&mut self) -> Result<(), Error> {
        let mut state: State = 0;
        let first = self.byte()?;
        if first > 17 {
            let count = usize::from(first - 17);
            self.literals(count)?;
            state = count.min(4);
        } else {
            self.ip -= 1;
        }
        loop {
            let op = self.byte()?;
            let (distance, length, next);
            match op {
                0..=15 if state == 0 => {
                    let count = 3 + self.length(usize::from(op), 15)?;
                    self.literals(count)?;
                    state = 4;
                    continue;
                }
                0..=15 => {
                    let high = usize::from(self.byte()?);
                    next = usize::from(op & 3);
                    let low = usize::from(op >> 2);
                    (distance, length) = if state == 4 {
                        ((high << 2) + low + 2049, 3)
                    } else {
                        ((high << 2) + low + 1, 2)
                    };
                }
                16..=31 => {
                    length = 2 + self.length(usize::from(op & 7), 7)?;
                    let word = self.le16()?;
                    next = word & 3;
                    distance = 16384 + (usize::from(op & 8) << 11) + (word >> 2);
                    if distance == 16384 {
                        return Ok(());
                    }
                }
                32..=63 => {
                    length = 2 + self.length(usize::from(op & 31), 31)?;
                    let word = self.le16()?;
                    next = word & 3;
                    distance = (word >> 2) + 1;
                }
                64..=127 => {
                    let high = usize::from(self.byte()?);
                    length = 3 + usize::from((op >> 5) & 1);
                    next = usize::from(op & 3);
                    distance = (high << 3) + usize::from((op >> 2) & 7) + 1;
                }
                128..=255 => {
                    let high = usize::from(self.byte()?);
                    length = 5 + usize::from((op >> 5) & 3);
                    next = usize::from(op & 3);
                    distance = (high << 3) + usize::from((op >> 2) & 7) + 1;
                }
            }
            self.copy_match(distance, length)?;
            self.literals(next)?;
            state = next;
        }
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self.src.get(self.ip).ok_or(Error::InputOverrun)?;
        self.ip += 1;
        Ok(b)
    }

    fn le16(&mut self) -> Result<usize, Error> {
        let pair = self
            .src
            .get(self.ip..self.ip + 2)
            .ok_or(Error::InputOverrun)?;
        self.ip += 2;
        Ok(usize::from(pair[0]) | usize::from(pair[1]) << 8)
    }

    /// A length field: `bits` if non-zero, else `max` plus 255 per zero byte plus the
    /// first non-zero byte.
    fn length(&mut self, bits: usize, max: usize) -> Result<usize, Error> {
        if bits != 0 {
            return Ok(bits);
        }
        let zeros = self.src[self.ip.min(self.src.len())..]
            .iter()
            .take_while(|&&b| b == 0)
            .count();
        self.ip += zeros;
        let last = usize::from(self.byte()?);
        Ok(max + zeros * 255 + last)
    }

    fn literals(&mut self, count: usize) -> Result<(), Error> {
        // Most runs are short: one fixed 16-byte copy when both buffers have the room
        // (bytes past the run are overwritten by what follows).
        if count <= WIDE
            && let Some(from) = self.src.get(self.ip..self.ip + WIDE)
            && let Some(to) = self.dst.get_mut(self.op..self.op + WIDE)
        {
            to.copy_from_slice(from);
            self.ip += count;
            self.op += count;
            return Ok(());
        }
        let from = self
            .src
            .get(self.ip..self.ip + count)
            .ok_or(Error::InputOverrun)?;
        self.dst
            .get_mut(self.op..self.op + count)
            .ok_or(Error::OutputOverrun)?
            .copy_from_slice(from);
        self.ip += count;
        self.op += count;
        Ok(())
    }

    /// Copies `length` bytes from `distance` back; an overlapping match repeats its
    /// pattern, copied in doubling steps.
    fn copy_match(&mut self, distance: usize, length: usize) -> Result<(), Error> {
        let start = self
            .op
            .checked_sub(distance)
            .ok_or(Error::LookbehindOverrun)?;
        let end = self.op + length;
        if end > self.dst.len() {
            return Err(Error::OutputOverrun);
        }
        if distance >= WIDE && end + WIDE <= self.dst.len() {
            // Fixed 16-byte steps, each reading only bytes already final (distance ≥ 16);
            // the last may spill past `end` into bytes that are written later.
            let mut at = 0;
            while at < length {
                let chunk: [u8; WIDE] = self.dst[start + at..start + at + WIDE]
                    .try_into()
                    .expect("16 bytes");
                self.dst[self.op + at..self.op + at + WIDE].copy_from_slice(&chunk);
                at += WIDE;
            }
        } else if distance >= length {
            self.dst.copy_within(start..start + length, self.op);
        } else {
            let mut at = self.op;
            while at < end {
                // [start, at) holds whole periods of the pattern and is final.
                let step = (at - start).min(end - at);
                self.dst.copy_within(start..start + step, at);
                at += step;
            }
        }
        self.op = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LZO1X-1 by another implementation (lzallright's compressor).
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; lzallright::worst_case_len(data.len())];
        let n = lzallright::compress(data, &mut out, &mut lzallright::Dict::default()).unwrap();
        out.truncate(n);
        out
    }

    fn roundtrip(data: &[u8]) {
        let packed = compress(data);
        let mut out = vec![0u8; data.len()];
        decompress(&packed, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn decodes_what_an_lzo1x_compressor_writes() {
        let mut rng = fastrand::Rng::with_seed(7);
        roundtrip(b"");
        roundtrip(b"a");
        roundtrip(&[0u8; 300_000]);
        roundtrip(&b"abcabcabcabcabcabcab".repeat(5000));
        let random: Vec<u8> = (0..100_000).map(|_| rng.u8(..)).collect();
        roundtrip(&random);
        for period in 1..20 {
            let pattern: Vec<u8> = (0..period).map(|_| rng.u8(..)).collect();
            let mut data = random[..1000].to_vec();
            data.extend(pattern.iter().cycle().take(50_000));
            data.extend_from_slice(&random[..3000]);
            roundtrip(&data);
        }
        let text: Vec<u8> = (0..200_000)
            .map(|i| b"select from where wal page tuple "[(i * 7 + i / 13) % 33])
            .collect();
        roundtrip(&text);
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let data: Vec<u8> = (0..20_000).map(|i| (i % 251) as u8 ^ rng.u8(..4)).collect();
        let packed = compress(&data);
        let mut out = vec![0u8; data.len()];
        for _ in 0..3000 {
            let mut bad = packed.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bad.len());
                bad[at] = rng.u8(..);
            }
            if rng.bool() {
                bad.truncate(rng.usize(..bad.len()));
            }
            let _ = decompress(&bad, &mut out);
        }
        assert_eq!(
            decompress(&packed[..packed.len() - 1], &mut out),
            Err(Error::InputOverrun)
        );
        assert!(decompress(&packed, &mut out[..100]).is_err());
        assert!(decompress(&packed, &mut vec![0u8; data.len() + 1]).is_err());
    }
}
