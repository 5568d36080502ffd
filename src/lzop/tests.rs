use super::*;

/// `lzop -c < file` of 64 × `a` (lzop 1.04, LZO 2.10; from wal-e-format.md §4.3).
pub(crate) const COMPRESSED_64_A: &[u8] = &[
    0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a, 0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 0x01,
    0x05, 0x03, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x81, 0x80, 0x5f, 0x5e, 0x10, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x30, 0x9e, 0x03, 0x3e, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x1d, 0x14, 0x8d,
    0x18, 0x41, 0x02, 0x61, 0x61, 0x61, 0x61, 0x61, 0x20, 0x0b, 0x10, 0x00, 0x0c, 0x61, 0x61, 0x61,
    0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x61, 0x11, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00,
];

/// `lzop -c < file` of `hello\n`: a stored block.
const STORED_HELLO: &[u8] = &[
    0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a, 0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 0x01,
    0x05, 0x03, 0x00, 0x00, 0x0d, 0x00, 0x00, 0x81, 0x80, 0x5f, 0x5e, 0x10, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x30, 0x9e, 0x03, 0x3e, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x08, 0x4b,
    0x02, 0x1f, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x0a, 0x00, 0x00, 0x00, 0x00,
];

fn decode(data: &[u8]) -> Result<Vec<u8>, Error> {
    decode_with(data, Options::default())
}

/// Decodes with `decode_to` and with `decode_to_on_two_threads`, which must agree on
/// the output or on the error.
fn decode_with(data: &[u8], options: Options) -> Result<Vec<u8>, Error> {
    let serial = decode_one_way(data, options, false);
    let parallel = decode_one_way(data, options, true);
    match (&serial, &parallel) {
        (Ok(a), Ok(b)) => assert!(a == b, "the two-thread decode differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the decoders disagree: {serial:?} / {parallel:?}"),
    }
    serial
}

fn decode_one_way(data: &[u8], options: Options, two_threads: bool) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut decoder = Decoder::with_options(data, options);
    let decoded = if two_threads {
        decoder.decode_to_on_two_threads(&mut out)
    } else {
        decoder.decode_to(&mut out)
    };
    let written = decoded.map_err(|err| match err {
        DecodeToError::Decode(err) => err,
        DecodeToError::Write(err) => panic!("write to Vec failed: {err}"),
    })?;
    assert_eq!(written, out.len() as u64);
    Ok(out)
}

/// Builds lzop streams of stored blocks with any header shape, for the cases the real
/// `lzop` binary never writes (old versions, CRC headers, extra fields, odd flags).
struct Builder {
    version: u16,
    flags: u32,
    extra: Option<Vec<u8>>,
    filter: Option<u32>,
    name: Vec<u8>,
}

impl Builder {
    fn new(flags: u32) -> Self {
        Builder {
            version: 0x1040,
            flags,
            extra: None,
            filter: None,
            name: Vec::new(),
        }
    }

    fn checksum(&self, data: &[u8]) -> u32 {
        if self.flags & F_H_CRC32 != 0 {
            crc32(data)
        } else {
            adler32(data)
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&self.version.to_be_bytes());
        h.extend_from_slice(&0x20a0u16.to_be_bytes());
        if self.version >= 0x0940 {
            h.extend_from_slice(&0x0940u16.to_be_bytes());
        }
        h.push(1);
        if self.version >= 0x0940 {
            h.push(5);
        }
        h.extend_from_slice(&self.flags.to_be_bytes());
        if let Some(filter) = self.filter {
            h.extend_from_slice(&filter.to_be_bytes());
        }
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&1_600_000_000u32.to_be_bytes());
        if self.version >= 0x0940 {
            h.extend_from_slice(&0u32.to_be_bytes());
        }
        h.push(self.name.len() as u8);
        h.extend_from_slice(&self.name);
        let sum = self.checksum(&h);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&sum.to_be_bytes());
        if let Some(extra) = &self.extra {
            let mut field = (extra.len() as u32).to_be_bytes().to_vec();
            field.extend_from_slice(extra);
            let sum = self.checksum(&field);
            out.extend_from_slice(&field);
            out.extend_from_slice(&sum.to_be_bytes());
        }
        out
    }

    fn stored_block(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        if self.flags & F_ADLER32_D != 0 {
            out.extend_from_slice(&adler32(data).to_be_bytes());
        }
        if self.flags & F_CRC32_D != 0 {
            out.extend_from_slice(&crc32(data).to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn stream(&self, blocks: &[&[u8]]) -> Vec<u8> {
        let mut out = self.header();
        for block in blocks {
            out.extend(self.stored_block(block));
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }
}

#[test]
fn decodes_the_reference_compressed_block() {
    assert_eq!(decode(COMPRESSED_64_A).unwrap(), vec![b'a'; 64]);
}

#[test]
fn decodes_the_reference_stored_block_and_reads_the_header() {
    let mut decoder = Decoder::new(STORED_HELLO);
    let mut out = Vec::new();
    decoder.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"hello\n");
    let header = decoder.header().unwrap();
    assert_eq!(header.version, 0x1040);
    assert_eq!(header.flags, 0x0300_000d);
    assert_eq!(header.mode, 0o100600);
    assert_eq!(header.mtime, 1_600_000_000);
}

#[test]
fn empty_input_is_not_lzop() {
    assert!(matches!(
        decode(b""),
        Err(Error::NotLzop { encrypted: false })
    ));
}

#[test]
fn openpgp_data_is_named_as_encrypted() {
    let err = decode(&[0x85, 0x01, 0x0c, 0x03, 0, 0, 0, 0, 0, 0]).unwrap_err();
    assert!(matches!(err, Error::NotLzop { encrypted: true }));
    assert!(err.to_string().contains("OpenPGP"));
}

#[test]
fn every_checksum_kind_is_verified() {
    let flags = F_ADLER32_D | F_CRC32_D | F_H_CRC32 | 0x0300_0000;
    let stream = Builder::new(flags).stream(&[b"abc", b"defg"]);
    assert_eq!(decode(&stream).unwrap(), b"abcdefg");
    // Flip one payload byte of the first block: both data checksums now disagree.
    let pos = stream.windows(3).position(|w| w == b"abc").unwrap();
    let mut bad = stream.clone();
    bad[pos] ^= 0x01;
    assert!(matches!(
        decode(&bad),
        Err(Error::Checksum { block: 0, .. })
    ));
}

#[test]
fn compressed_data_checksums_are_verified() {
    // Rewrite the reference stream to announce an Adler-32 of the compressed bytes.
    let mut b = Builder::new(F_ADLER32_D | F_ADLER32_C | 0x0300_0000);
    b.name = b"x".to_vec();
    let mut stream = b.header();
    let payload = &COMPRESSED_64_A[50..79];
    stream.extend_from_slice(&64u32.to_be_bytes());
    stream.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    stream.extend_from_slice(&adler32(&[b'a'; 64]).to_be_bytes());
    stream.extend_from_slice(&adler32(payload).to_be_bytes());
    stream.extend_from_slice(payload);
    stream.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode(&stream).unwrap(), vec![b'a'; 64]);
    let at = stream.len() - 4 - payload.len() - 4;
    stream[at] ^= 0xff;
    assert!(matches!(
        decode(&stream),
        Err(Error::Checksum {
            what: "Adler-32 of compressed data",
            ..
        })
    ));
}

#[test]
fn old_header_versions_are_read() {
    let mut b = Builder::new(F_ADLER32_D | 0x0300_0000);
    b.version = 0x0900;
    assert_eq!(decode(&b.stream(&[b"old"])).unwrap(), b"old");
}

#[test]
fn extra_field_is_checked_and_skipped() {
    for flags in [F_H_EXTRA_FIELD, F_H_EXTRA_FIELD | F_H_CRC32] {
        let mut b = Builder::new(flags | F_ADLER32_D);
        b.extra = Some(vec![7u8; 5000]);
        let stream = b.stream(&[b"payload"]);
        assert_eq!(decode(&stream).unwrap(), b"payload");
        let mut bad = stream.clone();
        bad[MAGIC.len() + 40] ^= 1; // inside the extra bytes
        assert!(matches!(
            decode(&bad),
            Err(Error::Checksum {
                what: "header extra field",
                ..
            })
        ));
    }
}

#[test]
fn header_checksum_mismatch_is_refused() {
    let mut bad = STORED_HELLO.to_vec();
    bad[0x19] ^= 1; // mtime byte
    assert!(matches!(
        decode(&bad),
        Err(Error::Checksum { what: "header", .. })
    ));
}

#[test]
fn filter_flag_is_refused_clearly() {
    let mut b = Builder::new(F_H_FILTER | F_ADLER32_D);
    b.filter = Some(4);
    let err = decode(&b.stream(&[b"x"])).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)));
    assert!(err.to_string().contains("filter 4"));
}

#[test]
fn reserved_flag_bits_are_refused() {
    let err = decode(&Builder::new(0x0000_4000).stream(&[b"x"])).unwrap_err();
    assert!(err.to_string().contains("unknown header flags"));
}

#[test]
fn blocks_up_to_64_mib_are_accepted_and_larger_refused() {
    let big = vec![0x5a; MAX_BLOCK_SIZE as usize];
    let b = Builder::new(F_ADLER32_D);
    assert_eq!(decode(&b.stream(&[&big])).unwrap().len(), big.len());
    let mut stream = b.header();
    stream.extend_from_slice(&(MAX_BLOCK_SIZE + 1).to_be_bytes());
    stream.extend_from_slice(&(MAX_BLOCK_SIZE + 1).to_be_bytes());
    assert!(matches!(decode(&stream), Err(Error::Corrupt(_))));
}

#[test]
fn bad_block_sizes_are_refused() {
    let b = Builder::new(F_ADLER32_D);
    for (dst, src) in [(10u32, 0u32), (10, 11), (u32::MAX, 1)] {
        let mut stream = b.header();
        stream.extend_from_slice(&dst.to_be_bytes());
        stream.extend_from_slice(&src.to_be_bytes());
        stream.extend_from_slice(&[0; 16]);
        assert!(decode(&stream).is_err(), "dst {dst} src {src} accepted");
    }
}

#[test]
fn trailing_zeros_are_accepted_and_garbage_refused() {
    let mut padded = STORED_HELLO.to_vec();
    padded.extend_from_slice(&[0; 10000]);
    assert_eq!(decode(&padded).unwrap(), b"hello\n");
    let mut garbage = STORED_HELLO.to_vec();
    garbage.extend_from_slice(b"\0\0junk");
    assert!(
        decode(&garbage)
            .unwrap_err()
            .to_string()
            .contains("trailing garbage")
    );
}

#[test]
fn concatenated_members_need_the_option() {
    let mut two = STORED_HELLO.to_vec();
    two.extend_from_slice(COMPRESSED_64_A);
    assert!(matches!(decode(&two), Err(Error::Unsupported(_))));
    let both = decode_with(
        &two,
        Options {
            allow_concatenated: true,
        },
    )
    .unwrap();
    assert_eq!(&both[..6], b"hello\n");
    assert_eq!(&both[6..], &[b'a'; 64][..]);
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    for stream in [COMPRESSED_64_A, STORED_HELLO] {
        for len in 0..stream.len() {
            assert!(
                decode(&stream[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }
}

#[test]
fn every_single_byte_corruption_is_detected_or_harmless() {
    // Flipping a byte anywhere must give an error or, for informational header fields
    // that the header checksum does not cover, the right data; never a panic or bad data.
    for stream in [COMPRESSED_64_A, STORED_HELLO] {
        let good = decode(stream).unwrap();
        for pos in 0..stream.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = stream.to_vec();
                bad[pos] ^= bit;
                if let Ok(out) = decode(&bad) {
                    assert_eq!(out, good, "flip at {pos} gave wrong data");
                }
            }
        }
    }
}

#[test]
fn random_garbage_after_magic_never_panics() {
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let mut data = MAGIC.to_vec();
        let len = rng.usize(0..200);
        data.extend((0..len).map(|_| rng.u8(..)));
        let _ = decode(&data);
    }
}

#[test]
fn read_and_decode_to_agree_on_short_reads() {
    /// A reader that returns at most 3 bytes per call, to exercise partial reads.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut out = Vec::new();
    Decoder::new(Dribble(COMPRESSED_64_A))
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, vec![b'a'; 64]);
}

#[test]
fn both_decoders_agree_on_any_block_count_and_any_bad_block() {
    let builder = Builder::new(F_ADLER32_D | F_CRC32_D);
    let blocks: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
    for count in 0..=blocks.len() {
        let refs: Vec<&[u8]> = blocks[..count].iter().map(Vec::as_slice).collect();
        let stream = builder.stream(&refs);
        assert_eq!(decode(&stream).unwrap(), refs.concat());
        for bad in 0..count {
            // The last data byte of block `bad`: its checksums must catch it, on
            // whichever thread the block is decoded.
            let end: usize = builder.header().len()
                + refs[..=bad]
                    .iter()
                    .map(|b| builder.stored_block(b).len())
                    .sum::<usize>();
            let mut corrupt = stream.clone();
            corrupt[end - 1] ^= 0x40;
            let err = decode(&corrupt).unwrap_err();
            assert!(err.to_string().contains(&format!("block {bad}")), "{err}");
        }
    }
}
