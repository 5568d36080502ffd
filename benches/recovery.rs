//! End-to-end PostgreSQL recovery of the benchmark archive's WAL (real WAL-E objects,
//! ≥ 100 segments in the full suite) served from S3 on loopback, with each
//! `restore_command` in the same run: wale with its prefetch, wale without, real WAL-E
//! 1.1.1 as WAL-E users run it (its default prefetch of 8, with the fixture shim's repair
//! of its prefetch on Python ≥ 3.8), and `cp` from a local directory of the same
//! segments already decompressed (the limit: no download, no decoding). Each run
//! restores the base backup first (untimed), then times PostgreSQL from start to the end
//! of recovery (promotion); each `restore_command` call is timed by a wrapper.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench recovery` (see `support`). Needs
//! root: PostgreSQL runs as `postgres`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::common::pg::*;
use support::common::{Archive, Backend, Run, S3Server, wale_for};
use support::{Comparison, Samples, Suite, wal_e_bin};

const SECTION: &str = "PostgreSQL recovery, WAL from S3 loopback";
const CP: &str = "cp from a local directory (the limit)";
const WALE: &str = "wale wal-fetch (prefetch 8)";
const WALE_NO_PREFETCH: &str = "wale wal-fetch --prefetch 0";
const WAL_E: &str = "WAL-E 1.1.1 wal-fetch (prefetch 8)";

fn main() {
    let mut suite = Suite::from_env("recovery");
    let source = suite.archive.clone();
    let (archive, server) = support::serve_over_s3(&source);
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
        (CP, format!("cp {}/%f %p", plain.display())),
        (WALE, format!("{wale} --envdir {env} wal-fetch %f %p")),
        (
            WALE_NO_PREFETCH,
            format!("{wale} --envdir {env} wal-fetch --prefetch 0 %f %p"),
        ),
    ];
    if let Some(bin) = wal_e_bin() {
        modes.push((
            WAL_E,
            format!("envdir {env} {} wal-fetch %f %p", bin.display()),
        ));
    }
    let runs = suite.runs(3, 3);
    let segments = support::wal_segments(&source).len();
    let case = format!("{segments} archived segments, PostgreSQL start to promotion");
    for (i, (tool, command)) in modes.iter().enumerate() {
        let mut samples = Samples::default();
        let mut calls = Vec::new();
        let mut replayed = 0;
        for run in 0..runs {
            let slot = (i * runs + run) as u16;
            let outcome = recover(&archive, &server, work.path(), slot, &timer, command);
            samples.push(support::Sample {
                elapsed: outcome.elapsed,
                peak_rss_kb: None,
            });
            calls.extend(outcome.call_micros);
            replayed = outcome.segments;
        }
        calls.sort();
        let at = |q: f64| {
            calls
                .get(((calls.len().max(1) - 1) as f64 * q).round() as usize)
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        let note = format!(
            "{replayed} segments restored; restore_command median {:.1} ms, p99 {:.1} ms",
            at(0.5),
            at(0.99)
        );
        suite.record((SECTION, &case, tool), &samples, None, &note);
    }
    let compare = |suite: &mut Suite, label, subject, baseline, max_ratio, target| {
        suite.compare(Comparison {
            label,
            section: SECTION,
            case: &case,
            subject,
            baseline,
            max_ratio,
            target,
        })
    };
    compare(
        &mut suite,
        "recovery, wale with prefetch vs cp",
        WALE,
        CP,
        Some(1.15),
        "≤ 1.15× the cp baseline",
    );
    compare(
        &mut suite,
        "recovery, wale --prefetch 0 vs cp",
        WALE_NO_PREFETCH,
        CP,
        None,
        "(no target)",
    );
    compare(
        &mut suite,
        "recovery, wale vs WAL-E (both prefetch 8)",
        WALE,
        WAL_E,
        None,
        "(no target)",
    );
    suite.save();
}

struct Outcome {
    elapsed: Duration,
    segments: usize,
    /// Every successful restore_command call's duration, in µs.
    call_micros: Vec<u64>,
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
    let micros: Vec<u64> = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (us, rc) = l.split_once(' ')?;
            (rc == "0").then(|| us.parse().ok()).flatten()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        elapsed,
        segments,
        call_micros: micros,
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
