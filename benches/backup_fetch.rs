//! `backup-fetch` throughput and memory, against baselines measured in the same run:
//! `lzop -d | tar -x` (+ `sync -f`, since wale's restore is durable) of the same
//! partitions, one after another, and real WAL-E 1.1.1's `backup-fetch` when installed.
//!
//! Run with `scripts/bench.sh` (builds the ≥ 1 GB benchmark archive with real WAL-E first
//! if it is missing) or `cargo bench --bench backup_fetch`. The large archive is read from
//! `$WALE_BENCH_ARCHIVE` (default `/var/tmp/wale-bench-cache/archive`, made by
//! `fixtures/make-bench-archive.sh`); without it only the small fixture is measured. Peak
//! RSS is the child's own `ru_maxrss`, for the small and the large backup: it must not
//! grow with the backup.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One measured run of a child process.
#[derive(Clone, Copy)]
struct Sample {
    elapsed: Duration,
    max_rss_kb: i64,
}

fn main() {
    let scratch_parent = std::env::var_os("WALE_BENCH_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let small = fixture().join("archive");
    let large = std::env::var_os("WALE_BENCH_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-bench-cache/archive"));
    let wal_e = find_wal_e();
    println!(
        "backup-fetch LATEST, file:// archive, median of the runs; MB/s of restored file data\n"
    );
    let small_rss = bench_archive(
        "small fixture",
        &small,
        &scratch_parent,
        5,
        wal_e.as_deref(),
    );
    if large.join("basebackups_005").is_dir() {
        let large_rss = bench_archive(
            "benchmark archive",
            &large,
            &scratch_parent,
            3,
            wal_e.as_deref(),
        );
        println!(
            "\npeak RSS of wale: {} KB on the small fixture, {} KB on the benchmark archive ({:.2}x)",
            small_rss,
            large_rss,
            large_rss as f64 / small_rss.max(1) as f64
        );
    } else {
        println!(
            "\n{} is missing: build it with fixtures/make-bench-archive.sh (or scripts/bench.sh) for the ≥ 1 GB run",
            large.display()
        );
    }
    if wal_e.is_none() {
        println!(
            "WAL-E not found (set WALE_E_BIN, or run fixtures/make-wale-fixture.sh once): no WAL-E rows."
        );
    }
}

/// Measures one archive; returns wale's peak RSS in KB.
fn bench_archive(
    label: &str,
    archive: &Path,
    scratch_parent: &Path,
    runs: usize,
    wal_e: Option<&Path>,
) -> i64 {
    let backup = only_backup(archive);
    let partitions = partitions_of(archive, &backup);
    let expanded = restored_bytes(archive, &backup);
    let mb = expanded as f64 / 1e6;
    println!(
        "== {label}: {backup}, {} partitions, {mb:.0} MB",
        partitions.len()
    );

    // One partition alone: wale against a single lzop | tar stream.
    let one = single_partition_archive(archive, &backup, &partitions[0]);
    let one_mb = part_expanded_mb(&partitions[0]);
    let lzop_one = median(runs, || {
        restore_with_lzop_tar(scratch_parent, &partitions[..1])
    });
    let wale_one = median(runs, || restore_with_wale(scratch_parent, one.path(), &[]));
    row("lzop -d | tar -x + sync, part 0", one_mb, lzop_one, None);
    row("wale, part 0 alone", one_mb, wale_one, Some(lzop_one));

    let lzop_all = median(runs, || restore_with_lzop_tar(scratch_parent, &partitions));
    row("lzop -d | tar -x + sync, all, in turn", mb, lzop_all, None);
    let wale_1 = median(runs, || {
        restore_with_wale(scratch_parent, archive, &["--pool-size", "1"])
    });
    row("wale --pool-size 1", mb, wale_1, Some(lzop_all));
    let wale = median(runs, || restore_with_wale(scratch_parent, archive, &[]));
    row("wale (default pool)", mb, wale, Some(lzop_all));
    if let Some(bin) = wal_e {
        let e = median(runs.min(3), || {
            restore_with_wal_e(bin, scratch_parent, archive)
        });
        row("WAL-E 1.1.1 backup-fetch", mb, e, None);
        println!(
            "{:<42} {:>9.1}x faster than WAL-E",
            "wale (default pool)",
            e.elapsed.as_secs_f64() / wale.elapsed.as_secs_f64()
        );
    }
    println!(
        "wale peak RSS: {} KB (pool 1: {} KB)\n",
        wale.max_rss_kb, wale_1.max_rss_kb
    );
    wale.max_rss_kb
}

fn row(label: &str, mb: f64, sample: Sample, baseline: Option<Sample>) {
    let secs = sample.elapsed.as_secs_f64();
    let ratio = baseline
        .map(|b| {
            format!(
                "  {:.2}x the lzop | tar speed",
                b.elapsed.as_secs_f64() / secs
            )
        })
        .unwrap_or_default();
    println!("{label:<42} {secs:>8.2} s {:>7.0} MB/s{ratio}", mb / secs);
}

/// Runs `f` `runs` times and keeps the median. Between runs (untimed) the previous
/// restore is removed and everything is flushed, so no run pays for another's writeback.
fn median(runs: usize, mut f: impl FnMut() -> Sample) -> Sample {
    let flush = || assert!(Command::new("sync").status().expect("sync").success());
    flush();
    let mut samples: Vec<Sample> = (0..runs)
        .map(|_| {
            let sample = f();
            flush();
            sample
        })
        .collect();
    samples.sort_by_key(|s| s.elapsed);
    samples[runs / 2]
}

/// Runs a child to completion, timing it and reading its own peak RSS.
fn measure(mut cmd: Command) -> Sample {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let start = Instant::now();
    // Reaped by wait4 below, which also reports the child's own resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child has not been waited for.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    Sample {
        elapsed,
        max_rss_kb: usage.ru_maxrss,
    }
}

fn fresh_dir(parent: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wale-bench-")
        .tempdir_in(parent)
        .unwrap()
}

fn restore_with_wale(parent: &Path, archive: &Path, extra: &[&str]) -> Sample {
    let dir = fresh_dir(parent);
    let mut cmd = wale();
    cmd.env("WALE_FILE_PREFIX", format!("file://{}", archive.display()));
    cmd.args(["--terse", "backup-fetch"])
        .arg(dir.path().join("pgdata"));
    cmd.args(["LATEST", "--blind-restore"]).args(extra);
    measure(cmd)
}

fn restore_with_lzop_tar(parent: &Path, partitions: &[PathBuf]) -> Sample {
    let dir = fresh_dir(parent);
    let list: Vec<String> = partitions
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect();
    let script = format!(
        "set -e; for p in {}; do lzop -d -c \"$p\" | tar -x -C '{}' 2>/dev/null; done; sync -f '{}'",
        list.join(" "),
        dir.path().display(),
        dir.path().display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script);
    measure(cmd)
}

fn restore_with_wal_e(bin: &Path, parent: &Path, archive: &Path) -> Sample {
    let dir = fresh_dir(parent);
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("WALE_LOG_DESTINATION", "stderr");
    cmd.env("WALE_FILE_PREFIX", format!("file://{}", archive.display()));
    cmd.args(["--terse", "backup-fetch"])
        .arg(dir.path().join("pgdata"))
        .arg("LATEST");
    measure(cmd)
}

fn only_backup(archive: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(archive.join("basebackups_005"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix("_backup_stop_sentinel.json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.pop().expect("a complete backup")
}

fn partitions_of(archive: &Path, backup: &str) -> Vec<PathBuf> {
    let dir = archive
        .join("basebackups_005")
        .join(backup)
        .join("tar_partitions");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    parts
}

fn restored_bytes(archive: &Path, backup: &str) -> u64 {
    let sentinel = archive
        .join("basebackups_005")
        .join(format!("{backup}_backup_stop_sentinel.json"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sentinel).unwrap()).unwrap();
    json["expanded_size_bytes"].as_u64().unwrap_or(0)
}

/// The decompressed size of one partition, read from its lzop block headers.
fn part_expanded_mb(part: &Path) -> f64 {
    let out = Command::new("lzop").arg("-l").arg(part).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).unwrap_or_default();
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e6
}

/// An archive holding only `part` of `backup` (links, no copies), to time one partition.
fn single_partition_archive(archive: &Path, backup: &str, part: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("basebackups_005");
    std::fs::create_dir_all(base.join(backup).join("tar_partitions")).unwrap();
    let sentinel = format!("{backup}_backup_stop_sentinel.json");
    let spec = std::fs::read(archive.join("basebackups_005").join(&sentinel)).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&spec).unwrap();
    json["expanded_size_bytes"] = serde_json::Value::Null;
    std::fs::write(base.join(&sentinel), json.to_string()).unwrap();
    std::os::unix::fs::symlink(
        part,
        base.join(backup)
            .join("tar_partitions")
            .join(part.file_name().unwrap()),
    )
    .unwrap();
    dir
}

fn find_wal_e() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("WALE_E_BIN") {
        return Some(PathBuf::from(bin));
    }
    let venv = PathBuf::from("/var/tmp/wale-fixture-cache/venv/bin/wal-e");
    venv.exists().then_some(venv)
}
