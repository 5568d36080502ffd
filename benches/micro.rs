//! Micro-benchmarks under criterion: LZO decoding and tar reading, in memory, on real
//! WAL-E objects from the benchmark archive (a typical pgbench WAL segment, the mostly
//! zero segment `pg_switch_wal()` leaves, the first tar partition of the base backup).
//!
//! LZO: wale's whole lzop decoder (container parsing and every Adler-32 check) against
//! the reference `lzop -d` (liblzo2, a process per run, output to /dev/null), and block
//! decoding alone by wale's LZO1X decoder and by the crates that were candidates
//! (`lzallright`, used until wale's own replaced it, `lzo`, lzokay-native). Tar: wale's streaming tar reader over the decoded partition against
//! GNU `tar -t --no-seek` reading the same stream from a file.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench micro`. After criterion's own
//! report, the medians go to `<results>/micro.json` for the suite's table.

#[path = "support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use support::{Comparison, Samples, Suite};

const LZO: &str = "LZO decode (in memory)";
const TAR: &str = "tar read (in memory)";
const WALE_DECODER: &str = "wale lzop::Decoder";
const LZOP: &str = "lzop -d (process)";

/// One compressed block of an lzop file, and its decompressed length.
struct Block {
    packed: Vec<u8>,
    dst_len: usize,
}

/// A real lzop object to decode.
struct Input {
    label: String,
    path: PathBuf,
    data: Vec<u8>,
    decoded_len: usize,
}

fn main() {
    let mut suite = Suite::from_env("micro");
    let inputs = inputs(&suite.archive);
    let mut criterion = Criterion::default()
        .output_directory(&suite.results_dir().join("criterion"))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if suite.quick { 300 } else { 1000 }))
        .measurement_time(Duration::from_millis(if suite.quick { 1000 } else { 5000 }))
        .configure_from_args();
    for input in &inputs {
        bench_lzo(&mut criterion, input);
    }
    let tar_stream = decode(&inputs[2].data);
    let tar_file = suite.results_dir().join("partition.tar");
    std::fs::write(&tar_file, &tar_stream).unwrap();
    bench_tar(&mut criterion, &tar_stream, &tar_file);
    criterion.final_summary();
    let _ = std::fs::remove_file(&tar_file);
    export(&mut suite, &inputs, tar_stream.len());
    suite.save();
}

fn bench_lzo(c: &mut Criterion, input: &Input) {
    let blocks = blocks_of(&input.data);
    let mut group = c.benchmark_group(LZO);
    group.throughput(Throughput::Bytes(input.decoded_len as u64));
    group.bench_function(BenchmarkId::new(WALE_DECODER, &input.label), |b| {
        b.iter(|| {
            let mut decoder = wale::lzop::Decoder::new(&input.data[..]);
            decoder.decode_to(&mut std::io::sink()).unwrap()
        })
    });
    group.bench_function(BenchmarkId::new(LZOP, &input.label), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| time_lzop(&input.path)).sum())
    });
    let mut out = vec![0u8; blocks.iter().map(|b| b.dst_len).max().unwrap_or(0)];
    type Codec = fn(&[u8], &mut [u8]) -> bool;
    let codecs: [(&str, Codec); 4] = [
        ("wale lzo1x blocks (chosen)", |s, d| {
            wale::lzop::lzo1x::decompress(s, d).is_ok()
        }),
        ("lzallright blocks", |s, d| {
            lzallright::decompress(s, d).is_ok()
        }),
        ("lzo crate blocks", |s, d| {
            lzo::decompress_into(s, d).is_ok()
        }),
        (
            "lzokay-native blocks",
            |s, d| matches!(lzokay_native::decompress_all(s, Some(d.len())), Ok(v) if v.len() == d.len()),
        ),
    ];
    for (name, decode) in codecs {
        group.bench_function(BenchmarkId::new(name, &input.label), |b| {
            b.iter(|| {
                for block in &blocks {
                    assert!(decode(&block.packed, &mut out[..block.dst_len]));
                }
            })
        });
    }
    group.finish();
}

fn bench_tar(c: &mut Criterion, stream: &[u8], file: &Path) {
    let mut group = c.benchmark_group(TAR);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let label = "WAL-E tar partition 0";
    group.bench_function(BenchmarkId::new("wale tar::Archive", label), |b| {
        b.iter(|| read_tar(stream))
    });
    group.bench_function(
        BenchmarkId::new("GNU tar -t --no-seek (process)", label),
        |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let start = Instant::now();
                        // --no-seek: read the data as a stream would, not seek past it.
                        let status = Command::new("tar")
                            .args(["-t", "--no-seek"])
                            .stdin(std::fs::File::open(file).unwrap())
                            .stdout(Stdio::null())
                            .status()
                            .unwrap();
                        assert!(status.success());
                        start.elapsed()
                    })
                    .sum()
            })
        },
    );
    group.finish();
}

/// Every member's header and data, as backup-fetch reads them; returns the member count.
fn read_tar(stream: &[u8]) -> usize {
    let mut archive = wale::tar::Archive::new(stream);
    let mut buf = vec![0u8; 256 * 1024];
    let mut members = 0;
    while let Some(header) = archive.next_header().unwrap() {
        let mut left = header.size;
        while left > 0 {
            let n = archive.read_data(&mut buf).unwrap();
            assert!(n > 0, "short member");
            // The copy is the work measured; without this the compiler drops it.
            std::hint::black_box(&buf[..n]);
            left -= n as u64;
        }
        members += 1;
    }
    members
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

fn decode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wale::lzop::Decoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The benchmark archive's median-sized and smallest WAL segments and its first tar
/// partition.
fn inputs(archive: &Path) -> Vec<Input> {
    let mut sized: Vec<(u64, String)> = support::wal_segments(archive)
        .into_iter()
        .map(|n| {
            let path = archive.join("wal_005").join(format!("{n}.lzo"));
            (std::fs::metadata(path).unwrap().len(), n)
        })
        .collect();
    sized.sort();
    let wal = |n: &str| archive.join("wal_005").join(format!("{n}.lzo"));
    let backups = archive.join("basebackups_005");
    let partition = std::fs::read_dir(&backups)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path().join("tar_partitions/part_00000000.tar.lzo");
            p.exists().then_some(p)
        })
        .max()
        .expect("a base backup partition");
    [
        ("typical WAL segment", wal(&sized[sized.len() / 2].1)),
        ("mostly-zero WAL segment", wal(&sized[0].1)),
        ("WAL-E tar partition 0", partition),
    ]
    .into_iter()
    .map(|(label, path)| {
        let data = std::fs::read(&path).unwrap();
        let decoded_len = decode(&data).len();
        Input {
            label: format!(
                "{label} ({:.1} MB → {:.1} MB)",
                data.len() as f64 / 1e6,
                decoded_len as f64 / 1e6
            ),
            path,
            data,
            decoded_len,
        }
    })
    .collect()
}

/// Walks an lzop file and keeps its compressed blocks (stored blocks need no codec).
fn blocks_of(data: &[u8]) -> Vec<Block> {
    let mut r = data;
    let header = wale::lzop::read_header(&mut r).unwrap();
    let u32_at = |r: &mut &[u8]| {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).unwrap();
        u32::from_be_bytes(b)
    };
    let mut blocks = Vec::new();
    loop {
        let dst_len = u32_at(&mut r) as usize;
        if dst_len == 0 {
            return blocks;
        }
        let src_len = u32_at(&mut r) as usize;
        let count = |flags: [u32; 2]| flags.iter().filter(|f| header.flags & **f != 0).count();
        let checksums = count([0x1, 0x100])
            + if src_len < dst_len {
                count([0x2, 0x200])
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

/// Criterion's medians (from its `new/estimates.json` and `new/sample.json`) into the
/// suite's rows and comparisons.
fn export(suite: &mut Suite, inputs: &[Input], tar_bytes: usize) {
    let root = suite.results_dir().join("criterion");
    for found in criterion_results(&root) {
        let bytes = if found.group == TAR {
            tar_bytes
        } else {
            match inputs.iter().find(|i| i.label == found.case) {
                Some(input) => input.decoded_len,
                None => continue,
            }
        };
        suite.record(
            (&found.group, &found.case, &found.tool),
            &found.samples,
            Some(bytes as u64),
            "",
        );
    }
    for input in inputs {
        suite.compare(Comparison {
            label: &format!("LZO decode, {}", input.label),
            section: LZO,
            case: &input.label,
            subject: WALE_DECODER,
            baseline: LZOP,
            max_ratio: Some(1.0 / 1.4),
            target: "≥ 1.4× the speed of lzop -d",
        });
    }
}

struct Found {
    group: String,
    case: String,
    tool: String,
    samples: Samples,
}

/// Every `benchmark.json` under `root`, with the per-iteration times of its samples.
fn criterion_results(root: &Path) -> Vec<Found> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.ends_with("new/benchmark.json")
                && let Some(f) = read_criterion(&path)
            {
                found.push(f);
            }
        }
    }
    found.sort_by(|a, b| (&a.group, &a.case, &a.tool).cmp(&(&b.group, &b.case, &b.tool)));
    found
}

fn read_criterion(benchmark: &Path) -> Option<Found> {
    let json = |name: &str| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(benchmark.with_file_name(name)).ok()?).ok()
    };
    let meta = json("benchmark.json")?;
    let sample = json("sample.json")?;
    let iters = sample["iters"].as_array()?;
    let times = sample["times"].as_array()?;
    let per_iter = iters
        .iter()
        .zip(times)
        .filter_map(|(i, t)| Some(Duration::from_secs_f64(t.as_f64()? / i.as_f64()? / 1e9)))
        .collect();
    Some(Found {
        group: meta["group_id"].as_str()?.to_string(),
        case: meta["value_str"].as_str()?.to_string(),
        tool: meta["function_id"].as_str()?.to_string(),
        samples: Samples::of_times(per_iter),
    })
}
