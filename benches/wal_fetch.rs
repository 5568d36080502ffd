//! `wal-fetch` latency per call, cold (a new process each time, as PostgreSQL runs it),
//! from S3 on loopback and from `file://`, against baselines measured in the same run:
//! `lzop -d` of the same object from local disk (the floor for any lzop-based tool) and,
//! when installed, real WAL-E 1.1.1 with `--prefetch 0`.
//!
//! Run with `cargo bench --bench wal_fetch`. WAL-E is looked for in `$WALE_E_BIN`, then
//! in the fixture generator's venv (`/var/tmp/wale-fixture-cache/venv/bin/wal-e`), then on
//! `PATH`; without it those rows say so. The S3 server is s3s-fs in this process.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CALLS: usize = 15;

fn main() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let largest = largest_segment(&archive);
    let missing = "0000000100000000000000FF".to_string();
    let wal_e = find_wal_e();
    println!("wal-fetch, one new process per call, {CALLS} calls each: median / p90 in ms");
    println!(
        "segment: {largest} ({} KB object, 16 MiB decompressed)\n",
        std::fs::metadata(archive.wal_object(&largest))
            .unwrap()
            .len()
            / 1000
    );
    let floor = stats(|| time(lzop_to(&archive.wal_object(&largest), &dest)));
    row("lzop -d of the local object (floor)", floor, None);
    for (backend, label) in [(Backend::S3, "S3 loopback"), (Backend::File, "file://")] {
        let wale_hit = stats(|| time(wale_cmd(&archive, backend, &server, &largest, &dest)));
        let wale_404 = stats(|| time(wale_cmd(&archive, backend, &server, &missing, &dest)));
        match &wal_e {
            Some(bin) => {
                let e_hit =
                    stats(|| time(wal_e_cmd(bin, &archive, backend, &server, &largest, &dest)));
                let e_404 =
                    stats(|| time(wal_e_cmd(bin, &archive, backend, &server, &missing, &dest)));
                row(&format!("wale, {label}, segment"), wale_hit, Some(e_hit));
                row(&format!("WAL-E, {label}, segment"), e_hit, None);
                row(&format!("wale, {label}, not found"), wale_404, Some(e_404));
                row(&format!("WAL-E, {label}, not found"), e_404, None);
            }
            None => {
                row(&format!("wale, {label}, segment"), wale_hit, None);
                row(&format!("wale, {label}, not found"), wale_404, None);
            }
        }
    }
    for (backend, label) in [(Backend::S3, "S3 loopback"), (Backend::File, "file://")] {
        let hits = prefetch_hits(&archive, backend, &server);
        row(&format!("wale, {label}, prefetch hit"), hits, None);
    }
    if wal_e.is_none() {
        println!(
            "\nWAL-E not found (set WALE_E_BIN, or run fixtures/make-wale-fixture.sh once): no WAL-E rows."
        );
    }
    println!("\n(x = WAL-E's median / wale's median in the same run; higher is better)");
}

/// Replays the fixture's segments in order, as recovery asks for them, with the
/// prefetcher on; times every call after the first (which starts the prefetcher).
fn prefetch_hits(archive: &Archive, backend: Backend, server: &S3Server) -> (Duration, Duration) {
    let names: Vec<String> = fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("RECOVERYXLOG");
        for (i, name) in names.iter().enumerate() {
            // PostgreSQL removes RECOVERYXLOG before each restore_command.
            let _ = std::fs::remove_file(&dest);
            let mut cmd = wale_for(archive, backend, Some(server));
            cmd.args(["--terse", "wal-fetch", "--prefetch", "8", name])
                .arg(&dest);
            let elapsed = time(cmd);
            if i > 0 {
                times.push(elapsed);
            }
            // PostgreSQL replays a segment between calls; give the prefetcher that time.
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cmd = wale_for(archive, backend, Some(server));
        cmd.args(["--terse", "wal-fetch", "0000000100000000000000FF"])
            .arg(&dest);
        time(cmd);
        std::thread::sleep(Duration::from_millis(1500));
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 9 / 10])
}

fn row(label: &str, (median, p90): (Duration, Duration), versus: Option<(Duration, Duration)>) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = versus
        .map(|(v, _)| {
            format!(
                "  {:.1}x faster than WAL-E",
                v.as_secs_f64() / median.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!("{label:<40} {:>8.1} / {:>8.1}{ratio}", ms(median), ms(p90));
}

fn stats(mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    f(); // warm the page cache and the server
    let mut times: Vec<Duration> = (0..CALLS).map(|_| f()).collect();
    times.sort();
    (times[CALLS / 2], times[CALLS * 9 / 10])
}

fn time(mut cmd: Command) -> Duration {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let start = Instant::now();
    let status = cmd.status().unwrap();
    let elapsed = start.elapsed();
    assert!(status.code().is_some(), "killed by a signal");
    elapsed
}

fn lzop_to(object: &Path, dest: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "lzop -d -c {} > {}",
        object.display(),
        dest.display()
    ));
    cmd
}

fn wale_cmd(
    archive: &Archive,
    backend: Backend,
    server: &S3Server,
    name: &str,
    dest: &Path,
) -> Command {
    let mut cmd = wale_for(archive, backend, Some(server));
    cmd.args(["--terse", "wal-fetch", "--prefetch", "0", name])
        .arg(dest);
    cmd
}

fn wal_e_cmd(
    bin: &Path,
    archive: &Archive,
    backend: Backend,
    server: &S3Server,
    name: &str,
    dest: &Path,
) -> Command {
    // WAL-E's environment is what wale gets, plus what Python WAL-E needs to run quietly.
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("WALE_LOG_DESTINATION", "stderr");
    match backend {
        Backend::File => {
            cmd.env("WALE_FILE_PREFIX", archive.file_prefix());
        }
        Backend::S3 => {
            cmd.envs(server.env(archive));
        }
    }
    cmd.args(["--terse", "wal-fetch", "--prefetch", "0", name])
        .arg(dest);
    cmd
}

fn largest_segment(archive: &Archive) -> String {
    fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .max_by_key(|n| std::fs::metadata(archive.wal_object(n)).unwrap().len())
        .unwrap()
}

fn find_wal_e() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("WALE_E_BIN") {
        return Some(PathBuf::from(bin));
    }
    let venv = PathBuf::from("/var/tmp/wale-fixture-cache/venv/bin/wal-e");
    if venv.exists() {
        return Some(venv);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v wal-e"])
        .output()
        .ok()?;
    on_path
        .status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&on_path.stdout).trim()))
}
