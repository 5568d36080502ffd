//! How long a hot standby made by `wale restore --standby --start` takes to replay a
//! segment after it appears in the archive (S3 on loopback): the archive holds the base
//! backup and all but the last few segments; once the standby has caught up, the others
//! are added one at a time, each at a different moment of the standby's retry cycle, and
//! the time until PostgreSQL's replay position enters the new segment is taken (what is
//! left, replaying it, is PostgreSQL's own work). Three standbys: wale's WAL stream (the
//! default), `restore_command` alone (`--no-wal-stream`, asked every 500 ms), and
//! `restore_command` alone with PostgreSQL's default `wal_retrieve_retry_interval` (5 s),
//! the baseline, measured in the same run.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench standby_lag` (see `support`). Needs
//! root: PostgreSQL runs as `postgres`.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::common::pg::*;
use support::common::{Archive, Run, S3Server, wale};
use support::{Comparison, Samples, Suite};

const SECTION: &str = "Hot standby following the archive, S3 loopback";
const WALE: &str = "wale restore --standby (WAL stream, archive asked every 500 ms)";
const RESTORE_COMMAND: &str = "wale restore --standby --no-wal-stream (retry every 500 ms)";
const DEFAULT: &str = "PostgreSQL's default retry (wal_retrieve_retry_interval 5 s)";

fn main() {
    let mut suite = Suite::from_env("standby_lag");
    let source = suite.archive.clone();
    let segments = support::wal_segments(&source);
    let later = suite.runs(6, 3).min(segments.len() - 2);
    let (first, added) = segments.split_at(segments.len() - later);
    let case = format!("{later} segments added to the archive one at a time, until replay");
    for (tool, extra) in [
        (WALE, &[][..]),
        (RESTORE_COMMAND, &["--no-wal-stream"][..]),
        (
            DEFAULT,
            &["--no-wal-stream", "--set", "wal_retrieve_retry_interval=5s"][..],
        ),
    ] {
        let lags = follow(&source, first, added, extra);
        let mut samples = Samples::default();
        for lag in &lags {
            samples.push(support::Sample {
                elapsed: *lag,
                peak_rss_kb: None,
            });
        }
        let note = format!(
            "from the object's upload to replay entering it; worst {:.2} s",
            lags.iter().max().unwrap_or(&Duration::ZERO).as_secs_f64()
        );
        suite.record((SECTION, &case, tool), &samples, None, &note);
    }
    suite.compare_within(
        Comparison {
            label: "standby lag, wale vs PostgreSQL's default retry",
            section: SECTION,
            case: &case,
            subject: WALE,
            baseline: DEFAULT,
            max_ratio: None,
            target: "a new segment replayed within 1 s of its archiving",
        },
        Duration::from_secs(1),
    );
    suite.save();
}

/// Restores a standby from an archive holding `first`, waits until it has replayed them,
/// then adds each of `added` and times how long the standby takes to enter it.
fn follow(source: &Path, first: &[String], added: &[String], extra: &[&str]) -> Vec<Duration> {
    let archive = Archive::empty();
    copy_objects(source, &archive.root(), "basebackups_005", None);
    copy_objects(source, &archive.root(), "wal_005", Some(first));
    let server = S3Server::start(&archive.s3_root());
    let work = support::postgres_work_dir("wale-lag-");
    let pgdata = work.path().join("data");
    let socket = work.path().join("sock");
    std::fs::create_dir(&socket).unwrap();
    give_to_postgres(&socket);
    let port = free_port();
    let mut restore = wale();
    restore.envs(server.env(&archive));
    restore
        .args(["--terse", "restore"])
        .arg(&pgdata)
        .args([
            "LATEST",
            "--standby",
            "--start",
            "--port",
            &port.to_string(),
        ])
        .arg("--set")
        .arg(format!("unix_socket_directories={}", socket.display()));
    restore.args(extra);
    Run::of(restore).expect_code(0);
    let replay = || {
        let mut psql = as_postgres(&pg_bin().join("psql"));
        psql.args(["-X", "-A", "-t", "-h"]).arg(&socket);
        psql.args(["-p", &port.to_string(), "-d", "postgres", "-c"]);
        psql.arg("select pg_last_wal_replay_lsn()");
        parse_lsn(run_ok(psql, "psql").trim())
    };
    let last_first = first.last().expect("segments before the added ones");
    wait_until(|| replay() >= segment_start(last_first), "the first part");
    let mut lags = Vec::new();
    for (i, name) in added.iter().enumerate() {
        // Each segment arrives at a different moment of the standby's retry cycle.
        std::thread::sleep(Duration::from_millis(300 + 170 * i as u64 % 500));
        copy_objects(
            source,
            &archive.root(),
            "wal_005",
            Some(std::slice::from_ref(name)),
        );
        let appeared = Instant::now();
        wait_until(|| replay() >= segment_start(name), name);
        lags.push(appeared.elapsed());
    }
    let mut stop = as_postgres(&pg_bin().join("pg_ctl"));
    stop.arg("-D")
        .arg(&pgdata)
        .args(["-m", "immediate", "-w", "stop"]);
    run_ok(stop, "pg_ctl stop");
    lags
}

/// Copies a directory of the archive (only the segments named, if `only`), each object
/// written beside and renamed, as an upload appears whole.
fn copy_objects(source: &Path, archive: &Path, dir: &str, only: Option<&[String]>) {
    match only {
        None => {
            let copied = Command::new("cp")
                .arg("-r")
                .arg(source.join(dir))
                .arg(archive)
                .status();
            assert!(copied.unwrap().success());
        }
        Some(names) => {
            std::fs::create_dir_all(archive.join(dir)).unwrap();
            for name in names {
                let object = format!("{name}.lzo");
                let staged = archive.join(dir).join(format!(".{object}"));
                std::fs::copy(source.join(dir).join(&object), &staged).unwrap();
                std::fs::rename(&staged, archive.join(dir).join(&object)).unwrap();
            }
        }
    }
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the standby did not reach {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The LSN where a 16 MiB segment begins.
fn segment_start(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    (log << 32) | (seg << 24)
}

fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(high, 16).unwrap_or(0) << 32) | u64::from_str_radix(low, 16).unwrap_or(0)
}
