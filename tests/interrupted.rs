//! `wale restore` interrupted: a partition that fails early stops the others before the
//! rollback; SIGINT and SIGTERM roll back and leave nothing; SIGKILL at any moment, then
//! the same command, gives the same server as an uninterrupted run. Real PostgreSQL,
//! real WAL-E archives (`fixtures/wale-small`: three partitions and a tablespace;
//! `fixtures/matrix/pg14`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::matrix::{Site, Version};

/// `wale-small` in a scratch directory the `postgres` user can read, with partition 0
/// damaged near its start: its first lzop block fails its checksum while the other two
/// partitions are still being written.
fn small_with_a_bad_first_partition() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let archive = work.path().join("archive");
    copy_tree(&fixture().join("archive"), &archive);
    let partition = archive.join(format!(
        "basebackups_005/{}/tar_partitions/part_00000000.tar.lzo",
        fixture_meta("BACKUP_NAME")
    ));
    let mut bytes = std::fs::read(&partition).unwrap();
    for byte in &mut bytes[4000..4064] {
        *byte ^= 0x5A;
    }
    std::fs::write(&partition, bytes).unwrap();
    (work, archive)
}

#[test]
fn a_partition_that_fails_early_stops_the_others_and_nothing_is_left() {
    let (work, archive) = small_with_a_bad_first_partition();
    for attempt in 0..6 {
        let pgdata = work.path().join(format!("data{attempt}/main"));
        let mut cmd = wale();
        cmd.env("WALE_FILE_PREFIX", format!("file://{}", archive.display()));
        cmd.arg("restore").arg(&pgdata).args(["--pool-size", "3"]);
        let run = Run::of(cmd).expect_code(202);
        assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("part_00000000.tar.lzo"),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("could not"),
            "attempt {attempt}: {}",
            run.stderr
        );
        // Nothing of the restore, even a moment later: no writer outlived the rollback.
        std::thread::sleep(Duration::from_millis(200));
        let pgdata_text = pgdata.display().to_string();
        for place in [
            pgdata.clone(),
            PathBuf::from(format!("{pgdata_text}.wale-env")),
            PathBuf::from(format!("{pgdata_text}_tablespaces")),
        ] {
            assert!(
                !place.exists(),
                "attempt {attempt}: {} is left",
                place.display()
            );
        }
    }
}

/// Sends `signal` to a running `wale restore` after `delay`; its exit code.
fn signalled_after(
    mut cmd: std::process::Command,
    delay: Duration,
    signal: rustix::process::Signal,
) -> i32 {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Its own process group, as a shell gives a foreground job.
    cmd.process_group(0);
    let child = cmd.spawn().unwrap();
    std::thread::sleep(delay);
    send_signal(child.id(), signal);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if code == 130 {
        assert!(
            stderr.contains("interrupted: removed everything"),
            "{stderr}"
        );
    }
    code
}

#[test]
fn sigint_and_sigterm_roll_back_and_leave_nothing() {
    let version = Version::of(14);
    // The signals land at fractions of how long the whole restore takes on this machine
    // now (fixed delays miss it on a fast machine and pile up at its start on a slow one).
    // The shorter of two runs: a first run on a cold page cache, or one that shared the
    // cores with another test, would put every signal after the end of the next ones.
    let whole = (0..2)
        .map(|_| {
            let site = Site::new(&version, |_| true);
            let started = std::time::Instant::now();
            site.restore(&["--standby", "--start"]).expect_code(0);
            started.elapsed()
        })
        .min()
        .unwrap();
    let mut interrupted = 0;
    for (i, fraction) in [0.05, 0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9]
        .into_iter()
        .enumerate()
    {
        let millis = (whole.as_millis() as f64 * fraction) as u64;
        let site = Site::new(&version, |_| true);
        let signal = if i % 2 == 0 {
            rustix::process::Signal::INT
        } else {
            rustix::process::Signal::TERM
        };
        let cmd = site.restore_command(&["--standby", "--start"]);
        let code = signalled_after(cmd, Duration::from_millis(millis), signal);
        match code {
            130 => {
                interrupted += 1;
                assert!(!site.pgdata().exists(), "after {millis} ms: PGDATA is left");
                for place in site.beside() {
                    assert!(
                        !place.exists(),
                        "after {millis} ms: {} is left",
                        place.display()
                    );
                }
            }
            0 => {} // finished before the signal
            other => panic!("after {millis} ms: exit {other}"),
        }
    }
    assert!(interrupted >= 4, "only {interrupted} runs were interrupted");
}

#[test]
fn sigkill_at_any_moment_then_the_same_command_gives_the_server() {
    let version = Version::of(14);
    for millis in [30u64, 150, 300, 450, 700, 1000, 1500, 2500] {
        let site = Site::new(&version, |_| true);
        let args = ["--standby", "--start"];
        let mut cmd = site.restore_command(&args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(millis));
        let _ = child.kill();
        let _ = child.wait();

        let started = Instant::now();
        let run = site.restore(&args);
        assert_eq!(
            run.code, 0,
            "killed after {millis} ms, then the same command: {}",
            run.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        site.wait_for_status("caught up after the rerun", |s| s["caught_up"] == true);
        assert_eq!(
            site.counted(),
            version.meta("EXPECTED_AT_END"),
            "killed after {millis} ms"
        );
    }
}

#[test]
fn another_command_on_an_interrupted_restore_is_refused_with_the_way_out() {
    let version = Version::of(14);
    let site = Site::new(&version, |_| true);
    let mut cmd = site.restore_command(&["--standby"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Until the restore has written its record, then kill it.
    let record = site.pgdata().join("wale-restore.json");
    let started = Instant::now();
    while !record.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let run = site.restore(&["--target-name", "wale_pitr"]).expect_code(2);
    assert!(
        run.stderr.contains("run that same command again"),
        "{}",
        run.stderr
    );
    assert!(site.pgdata().exists(), "another command removes nothing");
}
