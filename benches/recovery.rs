//! End-to-end PostgreSQL recovery of a real WAL-E archive (≥ 100 segments) served from S3
//! on loopback, several ways in one run: `restore_command` = wale with prefetch, wale
//! without, `cp` from a local directory holding the same segments already decompressed
//! (the limit), and WAL-E 1.1.1 when installed. Reports the time from starting
//! PostgreSQL to the end of recovery (promotion) and each `restore_command`'s latency.
//!
//! Run with `scripts/bench.sh` or `cargo bench --bench recovery` after
//! `fixtures/make-bench-archive.sh` (archive in `$WALE_BENCH_ARCHIVE`, default
//! `/var/tmp/wale-bench-cache/archive`). Needs root (PostgreSQL runs as `postgres`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pg::*;
use common::*;

fn main() {
    let source = std::env::var_os("WALE_BENCH_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-bench-cache/archive"));
    if !source.join("wal_005").is_dir() {
        println!(
            "{} is missing: build it with fixtures/make-bench-archive.sh",
            source.display()
        );
        return;
    }
    let archive = Archive::empty();
    link_tree(&source, &archive.root());
    give_to_postgres(archive.dir.path());
    let server = S3Server::start(&archive.s3_root());
    let work = tempfile::Builder::new()
        .prefix("wale-recovery-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let plain = work.path().join("wal-plain");
    decompress_all(&source.join("wal_005"), &plain);
    let timer = work.path().join("timed.sh");
    std::fs::write(
        &timer,
        "#!/bin/sh\nlog=$1; shift\ns=$(date +%s%N); \"$@\"; rc=$?; e=$(date +%s%N)\necho \"$(( (e - s) / 1000 )) $rc\" >> \"$log\"\nexit $rc\n",
    )
    .unwrap();
    std::fs::set_permissions(&timer, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let envdir = work.path().join("env");
    std::fs::create_dir(&envdir).unwrap();
    for (key, value) in server.env(&archive) {
        std::fs::write(envdir.join(key), format!("{value}\n")).unwrap();
    }
    std::fs::write(envdir.join("WALE_PREFETCH_IDLE_SECONDS"), "2\n").unwrap();
    std::fs::write(envdir.join("WALE_LOG_DESTINATION"), "stderr\n").unwrap();
    give_to_postgres(work.path());

    let wale = env!("CARGO_BIN_EXE_wale");
    let env = envdir.display();
    let mut modes = vec![
        (
            "cp from a local directory (limit)",
            format!("cp {}/%f %p", plain.display()),
        ),
        (
            "wale wal-fetch (prefetch 8)",
            format!("{wale} --envdir {env} wal-fetch %f %p"),
        ),
        (
            "wale wal-fetch --prefetch 0",
            format!("{wale} --envdir {env} wal-fetch --prefetch 0 %f %p"),
        ),
    ];
    let wal_e = PathBuf::from("/var/tmp/wale-fixture-cache/venv/bin/wal-e");
    if wal_e.exists() && Path::new("/usr/bin/envdir").exists() {
        modes.push((
            "WAL-E 1.1.1 wal-fetch --prefetch 0",
            format!(
                "envdir {env} {} wal-fetch --prefetch 0 %f %p",
                wal_e.display()
            ),
        ));
    }
    println!(
        "PostgreSQL recovery of {} from S3 on loopback; latencies per restore_command call\n",
        source.display()
    );
    println!(
        "{:<38} {:>10} {:>8} {:>9} {:>12} {:>10}",
        "restore_command", "recovery", "vs cp", "segments", "median ms", "p99 ms"
    );
    let mut limit = None;
    for (i, (label, command)) in modes.iter().enumerate() {
        let result = recover(&archive, &server, work.path(), i as u16, &timer, command);
        let limit_secs = *limit.get_or_insert(result.elapsed.as_secs_f64());
        println!(
            "{label:<38} {:>8.1} s {:>7.2}x {:>9} {:>12.1} {:>10.1}",
            result.elapsed.as_secs_f64(),
            result.elapsed.as_secs_f64() / limit_secs,
            result.segments,
            result.median_ms,
            result.p99_ms
        );
    }
}

struct Outcome {
    elapsed: Duration,
    segments: usize,
    median_ms: f64,
    p99_ms: f64,
}

/// Restores the backup with wale (untimed), then times PostgreSQL from start to
/// promotion with `restore_command`.
fn recover(
    archive: &Archive,
    server: &S3Server,
    work: &Path,
    slot: u16,
    timer: &Path,
    command: &str,
) -> Outcome {
    let dir = work.join(format!("run{slot}"));
    std::fs::create_dir(&dir).unwrap();
    let pgdata = dir.join("pgdata");
    let mut fetch = wale_for(archive, Backend::S3, Some(server));
    fetch
        .args(["--terse", "backup-fetch"])
        .arg(&pgdata)
        .arg("LATEST");
    Run::of(fetch).expect_code(0);
    let socket = dir.join("sock");
    std::fs::create_dir(&socket).unwrap();
    let calls = dir.join("calls.log");
    let restore_command = format!("{} {} {command}", timer.display(), calls.display());
    write_recovery_conf(
        &pgdata,
        25432 + slot,
        &socket,
        &restore_command,
        "archive_mode = off\nshared_buffers = 256MB\n",
    );
    give_to_postgres(&dir);
    assert!(Command::new("sync").status().unwrap().success());
    let start = Instant::now();
    let recovery = Recovery::start(&pgdata, &socket, 25432 + slot, dir.join("postgres.log"));
    recovery.wait_until_promoted(Duration::from_secs(1800));
    let elapsed = start.elapsed();
    let segments = recovery
        .log_text()
        .lines()
        .filter(|l| l.contains("restored log file \"0") && !l.contains(".history"))
        .count();
    drop(recovery);
    let mut micros: Vec<u64> = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (us, rc) = l.split_once(' ')?;
            (rc == "0").then(|| us.parse().ok()).flatten()
        })
        .collect();
    micros.sort();
    let at = |q: f64| {
        micros
            .get(((micros.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        elapsed,
        segments,
        median_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Hard-links (or copies, across file systems) the archive into the S3 server's root.
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let linked = Command::new("cp")
        .arg("-al")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    if !linked.success() {
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to)
            .status()
            .unwrap();
        assert!(copied.success());
    }
}

/// The segments, decompressed by the real lzop, for the `cp` baseline.
fn decompress_all(wal: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for entry in std::fs::read_dir(wal).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(plain) = name.strip_suffix(".lzo") else {
            continue;
        };
        let out = std::fs::File::create(into.join(plain)).unwrap();
        let status = Command::new("lzop")
            .args(["-d", "-c"])
            .arg(entry.path())
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
