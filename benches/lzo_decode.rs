//! LZO decode throughput: every candidate block codec, wale's whole lzop decoder, and the
//! reference `lzop -d` (liblzo2), on the same real lzop files, in one run.
//!
//! Run with `cargo bench --bench lzo_decode`. Inputs: the WAL-E fixture's tar partition and
//! WAL segments (real WAL-E objects), plus 64 MiB of text and of WAL-like pages compressed
//! by the real `lzop` here. Each figure is the median of 7 runs, in MB/s of decompressed
//! output, with its ratio to `lzop -d` on the same file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 7;

/// One compressed block of an lzop file, and its decompressed length.
struct Block {
    packed: Vec<u8>,
    dst_len: usize,
}

fn main() {
    let inputs = inputs();
    println!(
        "{:<34} {:>10} {:>14} {:>14} {:>14} {:>14}",
        "input (decompressed MB)", "lzop -d", "wale Decoder", "lzallright", "lzo", "lzokay-native"
    );
    for (label, path) in &inputs {
        let (blocks, total_out) = blocks_of(path);
        let mb = total_out as f64 / 1e6;
        let codec_mb = blocks.iter().map(|b| b.dst_len).sum::<usize>() as f64 / 1e6;
        let lzop = median(|| time_lzop(path));
        let wale = median(|| time_wale_decoder(path));
        let lzallright =
            median(|| time_blocks(&blocks, |s, d| lzallright::decompress(s, d).is_ok()));
        let lzo = median(|| time_blocks(&blocks, |s, d| lzo::decompress_into(s, d).is_ok()));
        let native = median(|| {
            time_blocks(&blocks, |s, d| {
                let out = lzokay_native::decompress_all(s, Some(d.len()));
                matches!(out, Ok(v) if v.len() == d.len())
            })
        });
        let rate = |t: Duration| mb / t.as_secs_f64();
        let lzop_rate = rate(lzop);
        let cell = |rate: f64| format!("{rate:>6.0} ({:.2}x)", rate / lzop_rate);
        let codec = |t: Duration| cell(codec_mb / t.as_secs_f64());
        println!(
            "{:<34} {:>10.0} {:>14} {:>14} {:>14} {:>14}",
            format!("{label} ({mb:.1})"),
            lzop_rate,
            cell(rate(wale)),
            codec(lzallright),
            codec(lzo),
            codec(native)
        );
    }
    println!(
        "\nMB/s of decompressed output (ratio to lzop -d, higher is better); median of {RUNS} runs."
    );
    println!("lzop -d includes process start, its Adler-32 checks and writing to /dev/null;");
    println!(
        "wale Decoder includes container parsing and every checksum; codec columns are block decoding only."
    );
}

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS).map(|_| f()).collect();
    times.sort();
    times[RUNS / 2]
}

fn time_lzop(path: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new("lzop")
        .args(["-d", "-c"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("lzop must be installed");
    assert!(status.success());
    start.elapsed()
}

fn time_wale_decoder(path: &Path) -> Duration {
    let data = std::fs::read(path).unwrap();
    let start = Instant::now();
    let mut decoder = wale::lzop::Decoder::new(&data[..]);
    decoder.decode_to(&mut std::io::sink()).unwrap();
    start.elapsed()
}

fn time_blocks(blocks: &[Block], decode: impl Fn(&[u8], &mut [u8]) -> bool) -> Duration {
    let mut out = vec![0u8; blocks.iter().map(|b| b.dst_len).max().unwrap_or(0)];
    let start = Instant::now();
    for block in blocks {
        let dst = &mut out[..block.dst_len];
        assert!(
            decode(&block.packed, dst),
            "a candidate failed on a valid block"
        );
    }
    start.elapsed()
}

/// Walks an lzop file and keeps its compressed blocks (stored blocks are skipped: no codec
/// runs on them); also returns the whole decompressed size.
fn blocks_of(path: &Path) -> (Vec<Block>, usize) {
    let data = std::fs::read(path).unwrap();
    let mut r = &data[..];
    let header = wale::lzop::read_header(&mut r).unwrap();
    let u32_at = |r: &mut &[u8]| {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).unwrap();
        u32::from_be_bytes(b)
    };
    let mut blocks = Vec::new();
    let mut total = 0;
    loop {
        let dst_len = u32_at(&mut r) as usize;
        if dst_len == 0 {
            return (blocks, total);
        }
        total += dst_len;
        let src_len = u32_at(&mut r) as usize;
        let checksums = [0x1u32, 0x100]
            .iter()
            .filter(|f| header.flags & **f != 0)
            .count()
            + if src_len < dst_len {
                [0x2u32, 0x200]
                    .iter()
                    .filter(|f| header.flags & **f != 0)
                    .count()
            } else {
                0
            };
        for _ in 0..checksums {
            u32_at(&mut r);
        }
        let (packed, rest) = r.split_at(src_len);
        r = rest;
        if src_len < dst_len {
            blocks.push(Block {
                packed: packed.to_vec(),
                dst_len,
            });
        }
    }
}

fn inputs() -> Vec<(String, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let archive = root.join("fixtures/wale-small/archive");
    let dir = root.join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    let partition = std::fs::read_dir(archive.join("basebackups_005"))
        .unwrap()
        .filter_map(|e| {
            let p = e
                .unwrap()
                .path()
                .join("tar_partitions/part_00000000.tar.lzo");
            p.exists().then_some(p)
        })
        .next()
        .expect("fixture partition");
    out.push(("WAL-E tar partition".to_string(), partition));
    // All fixture WAL segments concatenated through lzop would change them; decode the
    // largest real one as is.
    let largest_wal = std::fs::read_dir(archive.join("wal_005"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    out.push(("WAL-E WAL segment".to_string(), largest_wal));
    out.push((
        "text, lzop -c".to_string(),
        compressed(&dir, "text", text(64 << 20)),
    ));
    out.push((
        "WAL-like pages, lzop -c".to_string(),
        compressed(&dir, "wal-like", wal_like(64 << 20)),
    ));
    out
}

fn compressed(dir: &Path, name: &str, data: Vec<u8>) -> PathBuf {
    let path = dir.join(format!("{name}.lzo"));
    if !path.exists() {
        let mut child = Command::new("lzop")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        std::fs::write(&path, out.stdout).unwrap();
    }
    path
}

/// Log-like text with numbers, so it compresses about as well as real logs and SQL.
fn text(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(1);
    let words = [
        "select",
        "from",
        "where",
        "insert",
        "update",
        "postgres",
        "relation",
        "index",
        "tuple",
        "page",
        "wal",
        "checkpoint",
    ];
    let mut out = Vec::with_capacity(len + 100);
    while out.len() < len {
        let line = format!(
            "{} {} {} {} id={} lsn=0/{:X}\n",
            words[rng.usize(..words.len())],
            words[rng.usize(..words.len())],
            words[rng.usize(..words.len())],
            rng.u32(..100000),
            rng.u64(..1 << 40),
            rng.u32(..)
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// 8 KiB pages: a header, tuples of mixed text and binary, and a zero tail, like WAL.
fn wal_like(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(2);
    let body = text(1 << 20);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut page = vec![0u8; 8192];
        page[..2].copy_from_slice(&0xD110u16.to_le_bytes());
        let used = rng.usize(2048..7000);
        let start = rng.usize(..body.len() - used);
        page[24..24 + used - 24].copy_from_slice(&body[start..start + used - 24]);
        for b in page[24..used].iter_mut().step_by(13) {
            *b = rng.u8(..);
        }
        out.extend_from_slice(&page);
    }
    out.truncate(len);
    out
}
