//! Seeded campaigns that try to break wale's promises: injected S3 faults, kill -9 at
//! random moments, and mutation fuzzing of every parser. CI runs a bounded smoke run;
//! `WALE_CAMPAIGN_SCALE=N` multiplies the trials and executions (the README quotes a long
//! run). Each campaign prints its figures.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// Multiplier for trial counts: 1 in CI, larger for the long campaigns.
fn scale() -> usize {
    std::env::var("WALE_CAMPAIGN_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// What an attempt meets: nothing, a fault that passes, or one that does not.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    Transient,
    Permanent,
    Delay,
}

fn random_fault(rng: &mut fastrand::Rng, object_size: usize) -> (Fault, Effect) {
    match rng.u8(0..10) {
        0 | 1 => (Fault::Status(503, "SlowDown"), Effect::Transient),
        2 => (Fault::Status(500, "InternalError"), Effect::Transient),
        3 | 4 => (
            Fault::Truncate(rng.usize(0..object_size.max(1))),
            Effect::Transient,
        ),
        5 | 6 => (Fault::Reset, Effect::Transient),
        7 | 8 => (Fault::Stall(rng.u64(10..80)), Effect::Delay),
        _ => {
            if rng.bool() {
                (Fault::Status(400, "ExpiredToken"), Effect::Permanent)
            } else {
                (Fault::Status(403, "AccessDenied"), Effect::Permanent)
            }
        }
    }
}

#[test]
fn injected_faults_end_in_exact_output_or_a_loud_failure() {
    const RETRIES: usize = 4;
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let names: Vec<String> = fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let mut rng = fastrand::Rng::with_seed(2026);
    let (mut trials, mut faults, mut exact, mut loud) = (0, 0, 0, 0);
    for _ in 0..40 * scale() {
        let name = &names[rng.usize(..names.len())];
        let size = std::fs::metadata(archive.wal_object(name)).unwrap().len() as usize;
        let schedule: Vec<(Fault, Effect)> = (0..rng.usize(0..6))
            .map(|_| random_fault(&mut rng, size))
            .collect();
        for (fault, _) in &schedule {
            server.inject(&format!("{name}.lzo"), fault.clone());
        }
        // What must happen: attempts consume faults in order until one succeeds.
        let mut failures = 0;
        let mut expected = 0;
        for (_, effect) in &schedule {
            match effect {
                Effect::Delay => break,
                Effect::Permanent => {
                    expected = 201;
                    break;
                }
                Effect::Transient => {
                    failures += 1;
                    if failures == RETRIES {
                        expected = 200;
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&dest);
        let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
        cmd.env("WALE_RETRIES", RETRIES.to_string());
        cmd.args(["wal-fetch", "--prefetch", "0"])
            .arg(name)
            .arg(&dest);
        let started = Instant::now();
        let run = Run::of(cmd);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name}: took {:?}",
            started.elapsed()
        );
        assert_eq!(
            run.code, expected,
            "{name} with {schedule:?}:\n{}",
            run.stderr
        );
        if expected == 0 {
            assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(name)));
            exact += 1;
        } else {
            assert!(!dest.exists(), "{name}: a file was left after a failure");
            assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
            loud += 1;
        }
        // Faults the run did not reach are dropped before the next trial.
        server.clear_faults();
        trials += 1;
        faults += schedule.len();
    }
    println!(
        "fault campaign (wal-fetch): {trials} trials, {faults} faults injected, {exact} byte-exact, {loud} loud failures, 0 exit-1"
    );
}

#[test]
fn backup_fetch_survives_faults_or_fails_loudly() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let expected_tree: Vec<String> = wal_e_restore_manifest();
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut trials, mut faults) = (0, 0);
    for _ in 0..4 * scale() {
        let mut injected = 0;
        for part in 0..3 {
            for _ in 0..rng.usize(0..3) {
                let (fault, _) = random_fault(&mut rng, 4_000_000);
                server.inject(&format!("part_0000000{part}.tar.lzo"), fault);
                injected += 1;
            }
        }
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join("pgdata");
        let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
        cmd.env("WALE_RETRIES", "6");
        cmd.arg("backup-fetch")
            .arg(&target)
            .args(["LATEST", "--blind-restore"]);
        let run = Run::of(cmd);
        match run.code {
            0 => assert_same_tree(&manifest(&target), &expected_tree, "after faults"),
            200 | 201 => {
                assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
                assert!(!target.join("global/pg_control").exists());
            }
            other => panic!("exit {other}:\n{}", run.stderr),
        }
        server.clear_faults();
        trials += 1;
        faults += injected;
    }
    println!(
        "fault campaign (backup-fetch): {trials} trials, {faults} faults injected, 0 wrong trees, 0 exit-1"
    );
}

#[test]
fn the_prefetcher_under_faults_never_costs_a_correct_answer() {
    // Faults hit the prefetcher's downloads as much as anyone's: whatever it fails to
    // fetch, wal-fetch fetches in-band, and every answer is exact.
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let names: Vec<String> = fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let mut rng = fastrand::Rng::with_seed(31);
    let (mut calls, mut faults) = (0, 0);
    for _ in 0..scale() {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("RECOVERYXLOG");
        for name in &names {
            let size = std::fs::metadata(archive.wal_object(name)).unwrap().len() as usize;
            for _ in 0..rng.usize(0..3) {
                let (fault, effect) = random_fault(&mut rng, size);
                if effect != Effect::Permanent {
                    server.inject(&format!("{name}.lzo"), fault);
                    faults += 1;
                }
            }
            let _ = std::fs::remove_file(&dest);
            let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
            cmd.args(["wal-fetch", "--prefetch", "4"])
                .arg(name)
                .arg(&dest);
            Run::of(cmd).expect_code(0);
            assert!(
                std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(name)),
                "{name}"
            );
            calls += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        server.clear_faults();
    }
    println!(
        "fault campaign (prefetcher): {calls} wal-fetch calls, {faults} faults injected, all exact"
    );
}

#[test]
fn kill_9_at_random_moments_never_delivers_a_partial_file() {
    let archive = Archive::fixture_copy();
    let names: Vec<String> = fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("RECOVERYXLOG");
    let mut rng = fastrand::Rng::with_seed(99);
    let (mut trials, mut complete, mut absent) = (0, 0, 0);
    for _ in 0..100 * scale() {
        let name = &names[rng.usize(..names.len())];
        let _ = std::fs::remove_file(&dest);
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.args(["wal-fetch", "--prefetch", "0"])
            .arg(name)
            .arg(&dest);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.u64(0..70_000)));
        let _ = child.kill();
        child.wait().unwrap();
        match std::fs::read(&dest) {
            Ok(bytes) => {
                assert!(
                    bytes == lzop_decompress(&archive.wal_object(name)),
                    "{name}: partial or wrong file delivered"
                );
                complete += 1;
            }
            Err(_) => absent += 1,
        }
        let litter: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "RECOVERYXLOG")
            .collect();
        assert!(litter.is_empty(), "temporary files left: {litter:?}");
        trials += 1;
    }
    println!(
        "crash campaign (wal-fetch): {trials} kill -9 trials, {complete} complete, {absent} absent, 0 partial"
    );
}

#[test]
fn backup_fetch_killed_at_random_moments_is_never_startable_half_done_and_reruns() {
    let archive = Archive::fixture_copy();
    let expected = wal_e_restore_manifest();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut trials = 0;
    for _ in 0..5 * scale() {
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join("pgdata");
        let command = || {
            let mut cmd = wale_for(&archive, Backend::File, None);
            cmd.arg("backup-fetch")
                .arg(&target)
                .args(["LATEST", "--blind-restore"]);
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd
        };
        let mut child = command().spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..400)));
        let _ = child.kill();
        child.wait().unwrap();
        let marker = target.join(".wale-backup-fetch-incomplete");
        if target.join("global/pg_control").exists() {
            // Only the very last steps can have been cut: the files are all there.
            let got: Vec<String> = manifest(&target)
                .into_iter()
                .filter(|l| !l.starts_with(".wale-backup-fetch-incomplete\t"))
                .collect();
            assert_same_tree(&got, &expected, "killed after pg_control");
            if !marker.exists() {
                // The kill came after the restore had finished.
                trials += 1;
                continue;
            }
        }
        Run::of(command()).expect_code(0);
        assert_same_tree(&manifest(&target), &expected, "rerun after kill -9");
        trials += 1;
    }
    println!("crash campaign (backup-fetch): {trials} kill -9 trials, each rerun complete");
}

/// Mutates `seed` (flips, truncations, insertions, splices) and runs `target` on each,
/// counting executions; a panic fails the test with the input that caused it.
fn fuzz(name: &str, seeds: &[Vec<u8>], executions: usize, target: impl Fn(&[u8])) -> usize {
    let mut rng = fastrand::Rng::with_seed(name.len() as u64 * 7919);
    for i in 0..executions {
        let mut input = seeds[i % seeds.len()].clone();
        for _ in 0..rng.usize(1..5) {
            match rng.u8(0..4) {
                0 if !input.is_empty() => {
                    let at = rng.usize(..input.len());
                    input[at] ^= 1 << rng.u8(0..8);
                }
                1 if !input.is_empty() => input.truncate(rng.usize(..input.len())),
                2 => {
                    let at = rng.usize(..=input.len());
                    input.insert(at, rng.u8(..));
                }
                _ if !input.is_empty() => {
                    let at = rng.usize(..input.len());
                    input[at] = rng.u8(..);
                }
                _ => input.push(rng.u8(..)),
            }
        }
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("wale-fuzz-{name}-{i}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!("{name}: panic on input saved to {}", path.display());
        }
    }
    executions
}

#[test]
fn fuzzed_parsers_never_panic() {
    use std::io::Read;
    let runs = std::env::var("WALE_FUZZ_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000 * scale());
    // Small seeds keep executions fast: a real WAL-E object (the backup label) and lzop's
    // own output with each checksum kind and a stored block.
    let label = fixture_wal_names()
        .into_iter()
        .find(|n| n.ends_with(".backup"))
        .unwrap();
    let text: Vec<u8> = (0..300)
        .flat_map(|i| format!("row {i} of some text\n").into_bytes())
        .collect();
    let lzop_seeds = vec![
        std::fs::read(fixture().join(format!("archive/wal_005/{label}.lzo"))).unwrap(),
        lzop_compress(b"hello, lzop", &[]),
        lzop_compress(&text, &["--crc32"]),
        lzop_compress(&text, &["-9"]),
    ];
    let tar_seed = tar_of_fixture_head();
    let sentinel = std::fs::read(Path::new(&fixture().join("archive/basebackups_005")).join(
        format!("{}_backup_stop_sentinel.json", fixture_meta("BACKUP_NAME")),
    ))
    .unwrap();
    let mut total = 0;
    total += fuzz("lzop", &lzop_seeds, runs / 4, |input| {
        let _ = wale::lzop::Decoder::new(input).read_to_end(&mut Vec::new());
    });
    total += fuzz("tar", &[tar_seed], runs / 4, |input| {
        let mut archive = wale::tar::Archive::new(input);
        let mut buf = [0u8; 4096];
        while let Ok(Some(header)) = archive.next_header() {
            let _ = wale::extract::member_path(&header.path);
            while let Ok(n) = archive.read_data(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    });
    total += fuzz("sentinel", &[sentinel], runs / 4, |input| {
        if let Ok(detail) = wale::backups::parse_sentinel(input) {
            let _ = wale::tablespaces::from_spec(detail.spec.as_ref());
        }
    });
    let names: Vec<Vec<u8>> = [
        "http+path://127.0.0.1:9000",
        "https+virtualhost://s3.example",
        "base_000000010000000000000003_00000040_backup_stop_sentinel.json",
        "000000010000000000000003.00000028.backup",
        "00000002.history",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    total += fuzz("names", &names, runs / 4, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = wale::config::Endpoint::parse(&text);
        let _ = wale::layout::BackupName::from_sentinel_file_name(&text);
        let _ = wale::wal::WalFileKind::of(&text);
        let _ = wale::layout::partition_number(&text);
        let _ = wale::extract::member_path(input);
    });
    println!(
        "fuzz campaign: {total} executions over lzop, tar, sentinel JSON and name parsers, 0 panics"
    );
}

/// The first 64 KiB of the fixture's first partition, decompressed: real pax members.
fn tar_of_fixture_head() -> Vec<u8> {
    let part = fixture()
        .join("archive/basebackups_005")
        .join(fixture_meta("BACKUP_NAME"))
        .join("tar_partitions/part_00000000.tar.lzo");
    let mut tar = lzop_decompress(&part);
    tar.truncate(64 * 1024);
    tar
}

/// The processes a standby stands on, by their command lines: the postmaster and its
/// startup process (`postgres … startup`), and wale's prefetchers.
fn standby_processes(pgdata: &Path) -> Vec<(u32, String)> {
    let needle = pgdata.display().to_string();
    let postmaster = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ppid = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                let after = s[s.rfind(')')? + 1..].to_string();
                after.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if Some(pid) == postmaster {
            found.push((pid, "postmaster".to_string()));
        } else if ppid.is_some() && ppid == postmaster && text.contains("startup") {
            found.push((pid, "startup process".to_string()));
        } else if text.contains("wal-prefetch") && text.contains(&needle) {
            found.push((pid, "prefetcher".to_string()));
        }
    }
    found
}

/// Chaos: `wale restore --standby --start` killed with SIGKILL at a random moment, then the
/// same command; then, while the archive grows, a random process of the standby (the
/// postmaster, its startup process, a prefetcher) killed with SIGKILL, and the same command
/// again. Every trial must end caught up with the archive's exact data.
#[test]
fn chaos_random_kills_of_restore_and_of_the_standby_end_with_the_archives_data() {
    use crate::matrix::{Site, Version};
    let version = Version::of(13);
    let later = version.words("SEGMENTS_AFTER_RESTORE_POINT");
    let last = version.meta("LAST_WAL_SEGMENT");
    let mut rng = fastrand::Rng::with_seed(26);
    let trials = 3 * scale();
    let (mut restore_kills, mut standby_kills, mut exact) = (0, 0, 0);
    let mut killed_what: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..trials {
        let site = Site::new(&version, |name| !later.iter().any(|l| l == name));
        let args = ["--standby", "--start"];
        let mut cmd = site.restore_command(&args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..2500)));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            restore_kills += 1;
        }
        let _ = child.wait();
        site.restore(&args).expect_code(0);

        for name in &later {
            site.add_wal(name);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        let processes = standby_processes(&site.pgdata());
        if !processes.is_empty() {
            let (pid, what) = processes[rng.usize(0..processes.len())].clone();
            send_signal(pid, rustix::process::Signal::KILL);
            standby_kills += 1;
            *killed_what.entry(what).or_default() += 1;
        }
        // The same command brings back whatever is gone (a postmaster killed takes a
        // moment to be reaped and to release its shared memory).
        let started = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if site.restore(&args).code == 0 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not restarted");
        }
        site.wait_for_status("caught up after the kills", |s| {
            s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
        });
        assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"));
        exact += 1;
    }
    println!(
        "chaos campaign: {trials} trials, {restore_kills} restores killed mid-way, {standby_kills} standby processes killed ({killed_what:?}), {exact} ended caught up with the archive's exact data"
    );
}
