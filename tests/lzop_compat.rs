use std::io::Read;

use wale::lzop::Decoder;

use crate::common::*;

fn decode(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Decoder::new(stream).read_to_end(&mut out).unwrap();
    out
}

/// Inputs the issue asks for: empty, 1 byte, around the 256 KiB block size, 16 MiB,
/// zeros, random and text.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(42);
    let random =
        |n: usize, rng: &mut fastrand::Rng| (0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>();
    let text: Vec<u8> = (0..400_000)
        .flat_map(|i| {
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").into_bytes()
        })
        .take(3 << 20)
        .collect();
    // WAL-like: 8 KiB pages, half text and half zeros, as a mostly idle segment looks.
    let wal_like: Vec<u8> = (0..2048)
        .flat_map(|page| {
            let mut p = vec![0u8; 8192];
            p[..4096].copy_from_slice(&text[page * 64..page * 64 + 4096]);
            p
        })
        .collect();
    vec![
        ("empty", vec![]),
        ("one byte", vec![b'x']),
        ("256 KiB - 1", random(262_143, &mut rng)),
        ("256 KiB", random(262_144, &mut rng)),
        ("256 KiB + 1", random(262_145, &mut rng)),
        ("zeros 1 MiB", vec![0; 1 << 20]),
        ("random 1 MiB", random(1 << 20, &mut rng)),
        ("text 3 MiB", text),
        ("wal-like 16 MiB", wal_like),
    ]
}

#[test]
fn decodes_whatever_the_real_lzop_writes() {
    for (what, data) in inputs() {
        for flags in [&[][..], &["-1"], &["-9"], &["--crc32"], &["-F"]] {
            let stream = lzop_compress(&data, flags);
            assert!(
                decode(&stream) == data,
                "{what} with lzop {flags:?}: output differs"
            );
        }
    }
}

#[test]
fn decodes_file_input_headers_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("000000010000000000000001");
    std::fs::write(&path, vec![7u8; 300_000]).unwrap();
    // `lzop --stdout FILE` (WAL-E 0.5's WAL format) stores the name, mode and mtime.
    let out = std::process::Command::new("lzop")
        .arg("--stdout")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut decoder = Decoder::new(&out.stdout[..]);
    let mut data = Vec::new();
    decoder.read_to_end(&mut data).unwrap();
    assert_eq!(data, vec![7u8; 300_000]);
    assert_eq!(decoder.header().unwrap().name, b"000000010000000000000001");
}

#[test]
fn refuses_lzop_filter_output() {
    let stream = lzop_compress(b"filtered data", &["--filter=4"]);
    let err = Decoder::new(&stream[..])
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("filter"), "{err}");
}

#[test]
fn every_real_wal_e_object_decodes_like_lzop_d() {
    let archive = fixture().join("archive");
    let mut objects: Vec<_> = fixture_wal_names()
        .iter()
        .map(|n| archive.join("wal_005").join(format!("{n}.lzo")))
        .collect();
    let backup = fixture_meta("BACKUP_NAME");
    objects.push(archive.join(format!(
        "basebackups_005/{backup}/tar_partitions/part_00000000.tar.lzo"
    )));
    for object in objects {
        let stream = std::fs::read(&object).unwrap();
        assert!(
            decode(&stream) == lzop_decompress(&object),
            "{} differs",
            object.display()
        );
    }
}

#[test]
fn corrupting_real_objects_never_yields_wrong_data() {
    // Flip bytes all over a real WAL-E segment object: every result must be either an
    // error or the exact original (a flip in a field nothing checks, like the mtime).
    let object = fixture()
        .join("archive/wal_005")
        .join(format!("{}.lzo", fixture_meta("END_WAL_SEGMENT")));
    let stream = std::fs::read(&object).unwrap();
    let good = decode(&stream);
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..300 {
        let mut bad = stream.clone();
        let pos = rng.usize(..bad.len());
        bad[pos] ^= 1 << rng.u8(0..8);
        let mut out = Vec::new();
        if Decoder::new(&bad[..]).read_to_end(&mut out).is_ok() {
            assert!(
                out == good,
                "flip at {pos} decoded to different data without an error"
            );
        }
    }
}
