//! End-to-end PostgreSQL recovery of the benchmark archive's WAL (real WAL-E objects,
//! ≥ 100 segments in the full suite) served from S3 on loopback, with each
//! `restore_command` in the same run: wale with its prefetch, wale without, real WAL-E
//! 1.1.1 as WAL-E users run it (its default prefetch of 8, with the fixture shim's repair
//! of its prefetch on Python ≥ 3.8), pgBackRest's `archive-get` from its local repository
//! of the same WAL (asynchronous, one process per core, a queue as large as wale's
//! prefetch), and `cp` from a local directory of the same segments already decompressed.
//! The limit is PostgreSQL's replay alone: every segment already in `pg_wal`, no
//! `restore_command` (crash recovery from the backup label to the end of the WAL). Each
//! run restores the base backup first (untimed), then times PostgreSQL from start to the
//! end of recovery (promotion); each `restore_command` call is timed by a wrapper. Runs
//! are interleaved, one of each mode per round, so that the machine's drift spreads over
//! all of them; the spread (min–max) is in each row's note.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench recovery` (see `support`);
//! `WALE_BENCH_ONLY` (comma-separated words) keeps only the modes whose names contain
//! one. Needs root: PostgreSQL runs as `postgres`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::common::pg::*;
use support::common::{Archive, Backend, Run, S3Server, wale_for};
use support::{Comparison, PgBackRest, Samples, Suite, wal_e_bin};

const SECTION: &str = "PostgreSQL recovery, WAL from S3 loopback";
const CP: &str = "cp from a local directory (the limit)";
const WALE: &str = "wale wal-fetch (prefetch 8)";
const WALE_NO_PREFETCH: &str = "wale wal-fetch --prefetch 0";
const WAL_E: &str = "WAL-E 1.1.1 wal-fetch (prefetch 8)";
const REPLAY: &str = "replay alone, segments in pg_wal (the limit)";
const STREAM: &str = "wale WAL stream (recovery to the end streamed, restore_command fallback)";
const PROTOCOL: &str =
    "archive recovery, segments in pg_wal, restore_command false (the per-file protocol's limit)";
/// Stands for the data directory in a mode's command, which differs from run to run.
const PGDATA: &str = "{pgdata}";

/// One way of giving PostgreSQL its WAL.
struct Mode {
    tool: String,
    /// The restore_command; None: the segments are put in pg_wal before the start (with
    /// `false` as the command for [`PROTOCOL`]). For [`STREAM`], the fallback.
    command: Option<String>,
    runs: usize,
}
fn main() {
    let mut suite = Suite::from_env("recovery");
    let source = suite.archive.clone();
    let (archive, server) = support::serve_over_s3(&source);
    let work = support::postgres_work_dir("wale-recovery-");
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
    let (many, few) = (suite.runs(5, 3), suite.runs(2, 1));
    let mode = |tool: &str, command: Option<String>, runs| Mode {
        tool: tool.to_string(),
        command,
        runs,
    };
    let mut modes = vec![
        mode(REPLAY, None, many),
        mode(PROTOCOL, None, many),
        mode(CP, Some(format!("cp {}/%f %p", plain.display())), many),
        mode(
            WALE,
            Some(format!("{wale} --envdir {env} wal-fetch %f %p")),
            many,
        ),
        mode(
            STREAM,
            Some(format!("{wale} --envdir {env} wal-fetch %f %p")),
            many,
        ),
        mode(
            WALE_NO_PREFETCH,
            Some(format!(
                "{wale} --envdir {env} wal-fetch --prefetch 0 %f %p"
            )),
            few,
        ),
    ];
    let pgbackrest = PgBackRest::of_archive(&source).map(|p| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tool = format!(
            "{} archive-get (async, process-max {cores}, queue 128 MiB)",
            p.name()
        );
        let command = p.command_line(&format!(
            "--pg1-path={PGDATA} --archive-async --process-max={cores} \
             --archive-get-queue-max=128MiB --spool-path={PGDATA}/../spool archive-get %f \"%p\""
        ));
        modes.push(mode(&tool, Some(command), many));
        tool
    });
    if let Some(bin) = wal_e_bin() {
        modes.push(mode(
            WAL_E,
            Some(format!("envdir {env} {} wal-fetch %f %p", bin.display())),
            few,
        ));
    }
    // `WALE_BENCH_ONLY=replay,pg_wal,stream`: only the modes whose names contain one of
    // these words (a focused A/B; the full table needs every mode).
    if let Ok(only) = std::env::var("WALE_BENCH_ONLY") {
        modes.retain(|m| only.split(',').any(|word| m.tool.contains(word.trim())));
    }
    let segments = support::wal_segments(&source).len();
    let case = format!("{segments} archived segments, PostgreSQL start to promotion");
    let mut outcomes: Vec<Vec<Outcome>> = modes.iter().map(|_| Vec::new()).collect();
    let rounds = modes.iter().map(|m| m.runs).max().unwrap_or(0);
    let mut slot = 0u16;
    for round in 0..rounds {
        for k in 0..modes.len() {
            let i = (k + round) % modes.len();
            if outcomes[i].len() >= modes[i].runs {
                continue;
            }
            let how = match &modes[i].command {
                Some(command) if modes[i].tool == STREAM => Wal::Stream(command),
                Some(command) => Wal::Command(command),
                None if modes[i].tool == PROTOCOL => Wal::PreplacedBehindFalse(&plain),
                None => Wal::Preplaced(&plain),
            };
            outcomes[i].push(recover(&archive, &server, work.path(), slot, &timer, how));
            slot += 1;
        }
    }
    // Every mode must replay the same WAL: a store that lacks segments ends recovery
    // early, at the wrong point, and would look fast.
    let counts: std::collections::BTreeSet<usize> = modes
        .iter()
        .zip(&outcomes)
        .filter(|(mode, _)| mode.command.is_some() && mode.tool != STREAM)
        .flat_map(|(_, runs)| runs.iter().map(|run| run.segments))
        .collect();
    assert!(
        counts.len() <= 1,
        "the modes restored different numbers of segments ({counts:?}): one store lacks WAL"
    );
    for (mode, outcomes) in modes.iter().zip(outcomes) {
        let tool = mode.tool.as_str();
        let mut samples = Samples::default();
        let mut calls = Vec::new();
        let mut replayed = 0;
        for outcome in outcomes {
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
        let note = if mode.tool == STREAM {
            format!(
                "recovery to the end as wale restore writes it: a standby of wale's WAL stream, which promotes it once the archive's WAL is all flushed; {}",
                samples.spread()
            )
        } else if mode.tool == PROTOCOL {
            format!(
                "archive recovery that finds every segment in pg_wal after a restore_command that fails; {}",
                samples.spread()
            )
        } else if mode.command.is_some() {
            format!(
                "{replayed} segments restored; restore_command median {:.1} ms, p99 {:.1} ms; {}",
                at(0.5),
                at(0.99),
                samples.spread()
            )
        } else {
            format!("crash recovery from the backup label; {}", samples.spread())
        };
        suite.record((SECTION, &case, tool), &samples, None, &note);
    }
    let compare = |suite: &mut Suite, label, subject, baseline: &str, max_ratio, target| {
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
        "recovery, wale with prefetch vs the per-file protocol alone",
        WALE,
        PROTOCOL,
        Some(1.05),
        "≤ 1.05× archive recovery from pg_wal",
    );
    compare(
        &mut suite,
        "recovery, wale WAL stream vs replay alone",
        STREAM,
        REPLAY,
        Some(1.05),
        "≤ 1.05× PostgreSQL's replay alone",
    );
    compare(
        &mut suite,
        "recovery, wale WAL stream vs archive recovery from pg_wal",
        STREAM,
        PROTOCOL,
        Some(1.05),
        "≤ 1.05× archive recovery from pg_wal",
    );
    compare(
        &mut suite,
        "recovery, wale with prefetch vs replay alone",
        WALE,
        REPLAY,
        Some(1.05),
        "≤ 1.05× PostgreSQL's replay alone",
    );
    if let Some(tool) = &pgbackrest {
        compare(
            &mut suite,
            "recovery, wale vs pgBackRest async archive-get",
            WALE,
            tool,
            Some(0.9),
            "≤ 0.9× pgBackRest's async archive-get",
        );
    }
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
        Some(1.15),
        "≤ 1.15× the cp baseline",
    );
    compare(
        &mut suite,
        "recovery, wale vs WAL-E (both prefetch 8)",
        WALE,
        WAL_E,
        Some(1.0 / 3.0),
        "≥ 3× faster than WAL-E",
    );
    suite.save();
}

struct Outcome {
    elapsed: Duration,
    segments: usize,
    /// The duration of every restore_command call that exited 0 or 1 (a handover through
    /// pg_wal, or one of the last "not found"), in µs.
    call_micros: Vec<u64>,
}

/// Where a recovery gets its WAL.
enum Wal<'a> {
    /// From this restore_command (`{pgdata}` replaced by the data directory).
    Command(&'a str),
    /// Already in pg_wal, copied from this directory of decompressed segments (untimed).
    Preplaced(&'a Path),
    /// A recovery to the end of the archive through wale's WAL stream, with this
    /// restore_command as its fallback.
    Stream(&'a str),
    /// The same, read by archive recovery after `restore_command = false` fails for each:
    /// the cost of the per-file protocol alone (a fork per segment, segment-by-segment
    /// reading), with nothing fetched.
    PreplacedBehindFalse(&'a Path),
}

/// Restores the backup with wale (untimed), then times PostgreSQL from start to the end
/// of recovery.
fn recover(
    archive: &Archive,
    server: &S3Server,
    work: &Path,
    slot: u16,
    timer: &Path,
    wal: Wal,
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
    let restore_command = match wal {
        Wal::Command(command) => format!(
            "{} {} {}",
            timer.display(),
            calls.display(),
            command.replace(PGDATA, &pgdata.display().to_string())
        ),
        Wal::Stream(command) => command.replace(PGDATA, &pgdata.display().to_string()),
        Wal::Preplaced(_) => String::new(),
        Wal::PreplacedBehindFalse(_) => "false".to_string(),
    };
    write_recovery_conf(
        &pgdata,
        25432 + slot,
        &socket,
        &restore_command,
        "archive_mode = off\nshared_buffers = 256MB\n",
    );
    if let Wal::Preplaced(plain) | Wal::PreplacedBehindFalse(plain) = wal {
        if let Wal::Preplaced(_) = wal {
            // No recovery.signal: crash recovery from the backup label through pg_wal.
            std::fs::remove_file(pgdata.join("recovery.signal")).unwrap();
        }
        // A copy, not links: PostgreSQL recycles old segments by renaming and rewriting.
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", plain.display()))
            .arg(pgdata.join("pg_wal"))
            .status()
            .unwrap();
        assert!(copied.success(), "cp of the segments into pg_wal");
    }
    if let Wal::Stream(..) = wal {
        make_standby_of_stream(&pgdata);
    }
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    give_to_postgres(&dir);
    assert!(Command::new("sync").status().unwrap().success());
    let start = Instant::now();
    let recovery = Recovery::start(&pgdata, &socket, 25432 + slot, dir.join("postgres.log"));
    let elapsed = wait_for_the_end_of_recovery(&recovery, start);
    recovery.wait_until_promoted(Duration::from_secs(60));
    // Restored (PostgreSQL's line), or handed over through pg_wal (wale's line).
    let segments = recovery
        .log_text()
        .lines()
        .filter(|l| {
            (l.contains("restored log file \"0") && !l.contains(".history"))
                || (l.contains("handed 0") && l.contains(" over through "))
        })
        .count();
    if let Wal::Preplaced(_) = wal {
        assert!(
            recovery.log_text().contains("redo done at"),
            "crash recovery did not replay: {}",
            recovery.log_text()
        );
    }
    drop(recovery);
    let micros: Vec<u64> = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            // 1 is also a handover (and the last few "not found" calls).
            let (us, rc) = l.split_once(' ')?;
            (rc == "0" || rc == "1").then(|| us.parse().ok()).flatten()
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        elapsed,
        segments,
        call_micros: micros,
    }
}

/// How long from `start` until the server's log says recovery ended (the postmaster's
/// "ready to accept connections", read-write: after crash recovery, or after the
/// promotion that ends an archive recovery), looked for every 20 ms. Reading the log
/// keeps the clock off the machine being measured: asking the server through `psql`
/// would start a process and a backend five times a second beside the replay.
fn wait_for_the_end_of_recovery(recovery: &Recovery, start: Instant) -> Duration {
    const ENDED: &str = "database system is ready to accept connections";
    loop {
        if recovery.log_text().contains(ENDED) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "recovery did not end; log:\n{}",
            recovery.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Turns the archive recovery [`write_recovery_conf`] set up into a recovery to the end
/// of the archive through wale's WAL stream, as `wale restore` writes it: `standby.signal`,
/// `primary_conninfo` to the socket directory (mode 0700) in `pg_wal/.wal-e/stream`,
/// marked `promote-at-end` (the stream promotes the server once the archive's WAL is all
/// flushed), the latest timeline, `hot_standby = off` (nobody queries a recovery to the
/// end before it is promoted).
fn make_standby_of_stream(pgdata: &Path) {
    let stream = pgdata.join("pg_wal/.wal-e/stream");
    std::fs::create_dir_all(&stream).unwrap();
    std::fs::set_permissions(&stream, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(stream.join("promote-at-end"), "").unwrap();
    std::fs::remove_file(pgdata.join("recovery.signal")).unwrap();
    std::fs::write(pgdata.join("standby.signal"), "").unwrap();
    let conf = pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "primary_conninfo = 'host={} port=5432'\nwal_retrieve_retry_interval = '500ms'\nrecovery_target_timeline = 'latest'\nhot_standby = off\n",
        stream.display()
    ));
    std::fs::write(&conf, text).unwrap();
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
