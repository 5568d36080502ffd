//! wale's WAL stream (`restore --standby`'s fast path): real PostgreSQL 13 and 15
//! standbys from real WAL-E archives (the version matrix's fixtures) follow a timeline
//! switch through it, catch up while it is killed again and again mid-stream (the
//! `restore_command` fallback and its restart by `wal-fetch`), and only the server's
//! owner may connect to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::pg::{as_postgres, give_to_postgres};
use crate::common::{send_signal, wale_processes};
use crate::matrix::{Site, Version};

/// Polls `sql` on `site` until it answers `expected` (errors count as not yet).
fn wait_for_answer(site: &Site, sql: &str, expected: &str, what: &str) {
    let started = Instant::now();
    loop {
        let mut cmd = as_postgres(Path::new("/usr/lib/postgresql/15/bin/psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-h"]).arg(site.sock());
        cmd.args(["-p", &site.port().to_string(), "-d", "postgres", "-c", sql]);
        let out = cmd.output().unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: {sql} did not answer {expected:?} in 120 s ({});\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            site.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The pids of the `wale wal-stream` processes serving `pgdata`.
fn stream_pids(pgdata: &Path) -> Vec<u32> {
    wale_processes("wal-stream", &pgdata.display().to_string())
}

/// A standby restored from the archive as it stood at the restore point (without the
/// `later` segments), started and caught up; its caught-up status.
fn standby_at_the_restore_point<'a>(
    version: &'a Version,
    later: &[String],
) -> (Site<'a>, serde_json::Value) {
    let standby = Site::new(version, |name| !later.iter().any(|l| l == name));
    standby
        .restore(&["LATEST", "--standby", "--start"])
        .expect_code(0);
    let caught =
        standby.wait_for_status("caught up with the first part", |s| s["caught_up"] == true);
    (standby, caught)
}

fn stream_dir(pgdata: &Path) -> PathBuf {
    pgdata.join("pg_wal/.wal-e/stream")
}

/// The primary promoted a second time, elsewhere: restored from the same archive to its
/// end, promoted to timeline 2, rows written and archived with lzop as WAL-E lays them
/// out. Meanwhile the standby streams timeline 1; it must end that stream at the switch
/// point, fetch timeline 2's history and stream timeline 2, with the exact rows. A
/// recovery that stays on timeline 1 (`--target-timeline current`) is promoted at its end.
fn a_standby_streams_across_a_timeline_switch(major: u32) {
    let version = Version::of(major);
    let standby = Site::new(&version, |_| true);
    standby
        .restore(&[
            "LATEST",
            "--standby",
            "--start",
            "--target-timeline",
            "latest",
        ])
        .expect_code(0);
    standby.wait_for_status("caught up", |s| s["caught_up"] == true);

    let wal_dir = standby.archive().join("wal_005");
    give_to_postgres(&wal_dir);
    let primary = Site::on(
        &version,
        |_| false,
        standby.archive(),
        standby.archive_env.clone(),
    );
    primary.restore(&[]).expect_code(0);
    let conf = primary.pgdata().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "archive_mode = on\narchive_command = 'lzop -c < %p > {d}/%f.lzo.tmp && mv {d}/%f.lzo.tmp {d}/%f.lzo'\n",
        d = wal_dir.display()
    ));
    std::fs::write(&conf, text).unwrap();
    primary.restore(&["--start"]).expect_code(0);
    wait_for_answer(&primary, "select pg_is_in_recovery()", "f", "promotion");
    primary.query("create table after_switch as select generate_series(1, 1000) as i");
    primary.query("select pg_switch_wal()");
    wait_for_answer(
        &primary,
        "select left(last_archived_wal, 8) from pg_stat_archiver",
        "00000002",
        "timeline 2 archived",
    );
    assert!(wal_dir.join("00000002.history.lzo").exists());

    wait_for_answer(
        &standby,
        "select count(*) from after_switch",
        "1000",
        "the switch",
    );
    let status = standby.wait_for_status("caught up on timeline 2", |s| {
        s["caught_up"] == true && s["timeline"] == 2
    });
    assert_eq!(status["standby"], true, "{status:#}");
    let log = standby.log();
    assert!(log.contains("started streaming WAL from primary"), "{log}");
    assert!(
        log.contains("replication terminated by primary server")
            && log.contains("End of WAL reached on timeline 1"),
        "the stream did not end timeline 1 at its switch point: {log}"
    );
    assert!(
        log.contains("WAL streaming at") && log.contains("on timeline 2"),
        "timeline 2 was not streamed: {log}"
    );
    assert_eq!(standby.counted(), version.meta("EXPECTED_AT_END"));
    let run = standby.promote().expect_code(0);
    assert!(run.stderr.contains("accepts writes"), "{}", run.stderr);

    // A recovery to the end on the backup's timeline (`current`) ends where timeline 1's
    // WAL in the archive ends, and is promoted there: the stream does not wait at the
    // switch point for a timeline 2 the server will not follow.
    let current = Site::on(
        &version,
        |_| false,
        standby.archive(),
        standby.archive_env.clone(),
    );
    current
        .restore(&["LATEST", "--start", "--target-timeline", "current"])
        .expect_code(0);
    wait_for_answer(&current, "select pg_is_in_recovery()", "f", "promotion");
    assert_eq!(current.counted(), version.meta("EXPECTED_AT_END"));
    wait_for_answer(
        &current,
        "select to_regclass('after_switch') is null",
        "t",
        "timeline 1's data only",
    );
    let log = current.log();
    assert!(log.contains("started streaming WAL from primary"), "{log}");
    assert!(log.contains("received promote request"), "{log}");
}

/// The stream's process killed with SIGKILL every 150 ms while the archive grows: the
/// standby falls back to `restore_command`, which starts the stream again, and catches
/// up with the archive's exact data.
fn a_stream_killed_mid_stream_is_replaced(major: u32) {
    let version = Version::of(major);
    let later = version.words("SEGMENTS_AFTER_RESTORE_POINT");
    let (standby, _) = standby_at_the_restore_point(&version, &later);
    let pgdata = standby.pgdata();
    assert!(!stream_pids(&pgdata).is_empty(), "no stream runs");

    let mut killed = 0;
    for name in &later {
        standby.add_wal(name);
        for _ in 0..3 {
            for pid in stream_pids(&pgdata) {
                send_signal(pid, rustix::process::Signal::KILL);
                killed += 1;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    assert!(killed >= 2, "the stream was killed {killed} times");
    let last = version.meta("LAST_WAL_SEGMENT");
    standby.wait_for_status("caught up with the grown archive", |s| {
        s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
    });
    assert_eq!(standby.counted(), version.meta("EXPECTED_AT_END"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_pids(&pgdata).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stream was not started again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = standby.log();
    assert!(
        log.matches("started streaming WAL from primary").count() >= 2,
        "the standby did not stream again after the kills: {log}"
    );
}

/// The socket's directory is the server owner's alone (0700), and the stream refuses
/// any other user (root here, who can pass any directory): a replication client as the
/// owner is answered with this cluster's identity, one as root is refused. The owner
/// gets nothing but WAL: a plain session, a slot, any other command are refused with
/// one line each.
fn only_the_owner_may_connect(major: u32) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let version = Version::of(major);
    let standby = Site::new(&version, |_| true);
    standby
        .restore(&["LATEST", "--standby", "--start"])
        .expect_code(0);
    standby.wait_for_status("caught up", |s| s["caught_up"] == true);
    let dir = stream_dir(&standby.pgdata());
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        meta.uid(),
        std::fs::metadata(standby.pgdata()).unwrap().uid()
    );
    let conninfo = format!("host={} port=5432 replication=true", dir.display());
    let psql = Path::new("/usr/lib/postgresql/15/bin/psql");
    let mut owner = as_postgres(psql);
    owner.args(["-X", "-A", "-t", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"]);
    let out = owner.output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let system = standby.query("select system_identifier from pg_control_system()");
    assert!(answer.starts_with(&format!("{system}|")), "{answer}");
    let root = std::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
        .output()
        .unwrap();
    assert!(!root.status.success());
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("serves only the data directory's owner"),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    // The owner gets WAL and nothing else: no plain sessions, no slots, no other command.
    let refused = |conninfo: &str, command: &str, why: &str| {
        let mut cmd = as_postgres(psql);
        cmd.args(["-X", "-A", "-t", "-d", conninfo, "-c", command]);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(stderr.contains(why), "{command}: {stderr}");
    };
    let plain = format!("host={} port=5432 dbname=postgres", dir.display());
    refused(&plain, "select 1", "physical replication connections only");
    refused(
        &conninfo,
        "START_REPLICATION SLOT s PHYSICAL 0/0",
        "has no replication slots",
    );
    refused(&conninfo, "SHOW wal_segment_size", "does not take");
    refused(
        &conninfo,
        "TIMELINE_HISTORY 9",
        "the archive has no 00000009.history",
    );
}

/// A corrupt segment in the archive (another segment's object under its name): the
/// stream refuses it with one line naming the object, which PostgreSQL logs and
/// `status` reports; nothing of it is replayed. Once the right object is archived, the
/// standby catches up with the exact data (through `restore_command` while the stream
/// holds off after its failure, or the stream again).
fn a_corrupt_segment_is_refused_and_reported(major: u32) {
    let version = Version::of(major);
    let later = version.words("SEGMENTS_AFTER_RESTORE_POINT");
    let (standby, caught) = standby_at_the_restore_point(&version, &later);
    let wal = standby.archive().join("wal_005");
    let first_later = format!("{}.lzo", later[0]);
    let wrong = format!("{}.lzo", caught["replay_segment"].as_str().unwrap());
    std::fs::copy(wal.join(&wrong), wal.join(&first_later)).unwrap();
    let status = standby.wait_for_status("the corrupt segment reported", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&later[0]))
    });
    assert_eq!(status["caught_up"], false, "{status:#}");
    assert_eq!(
        status["replay_segment"], caught["replay_segment"],
        "{status:#}"
    );
    let log = standby.log();
    assert!(
        log.contains(&later[0]) && log.contains("page header address"),
        "PostgreSQL's log does not name the corrupt object: {log}"
    );
    for name in &later {
        standby.add_wal(name);
    }
    let last = version.meta("LAST_WAL_SEGMENT");
    standby.wait_for_status("caught up with the repaired archive", |s| {
        s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
    });
    assert_eq!(standby.counted(), version.meta("EXPECTED_AT_END"));
}

/// A recovery to the end of the archive (no `--standby`) runs as a standby of the
/// stream and is promoted once the archive's WAL is all flushed: `restore --start`
/// returns with the server promoted on the archive's last data.
fn a_recovery_to_the_end_streams_and_is_promoted_there(major: u32) {
    let version = Version::of(major);
    let site = Site::new(&version, |_| true);
    site.restore(&["LATEST", "--start"]).expect_code(0);
    wait_for_answer(&site, "select pg_is_in_recovery()", "f", "promotion");
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"));
    let log = site.log();
    assert!(log.contains("started streaming WAL from primary"), "{log}");
    assert!(log.contains("received promote request"), "{log}");
    assert!(
        !log.contains("restored log file \"0"),
        "segments came through restore_command: {log}"
    );
    site.query("insert into matrix_check values (100000, 99, 'after the end')");
}

/// A recovery to the end of the archive whose stream `hold_off` keeps from serving (done
/// to the stream's directory between the restore and the start): every segment comes
/// through `restore_command`, and at the archive's end `wal-fetch` asks for the promotion.
fn recovered_without_the_stream<'a>(
    version: &'a Version,
    hold_off: impl FnOnce(&Path),
) -> Site<'a> {
    let site = Site::new(version, |_| true);
    site.restore(&["LATEST"]).expect_code(0);
    hold_off(&stream_dir(&site.pgdata()));
    site.restore(&["LATEST", "--start"]).expect_code(0);
    wait_for_answer(&site, "select pg_is_in_recovery()", "f", "promotion");
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"));
    let log = site.log();
    assert!(!log.contains("started streaming WAL"), "{log}");
    assert!(log.contains("restored log file \"0"), "{log}");
    assert!(log.contains("received promote request"), "{log}");
    site
}

/// The stream held off by a failure recorded a moment ago (as a stream that cannot start
/// leaves): `wal-fetch` does not even try it.
fn a_recovery_to_the_end_without_the_stream_is_promoted_by_wal_fetch(major: u32) {
    let version = Version::of(major);
    recovered_without_the_stream(&version, |stream| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let failure = format!("{now} the test holds the stream off\n");
        std::fs::write(stream.join("failure"), failure).unwrap();
    });
}

/// A stream that really cannot start (its socket's path taken by a directory, so binding
/// fails): the failure is recorded with its reason.
fn a_stream_that_cannot_start_leaves_recovery_to_wal_fetch(major: u32) {
    let version = Version::of(major);
    let site = recovered_without_the_stream(&version, |stream| {
        let blocker = stream.join(".s.PGSQL.5432");
        std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
        give_to_postgres(&blocker);
    });
    let failure = std::fs::read_to_string(stream_dir(&site.pgdata()).join("failure")).unwrap();
    assert!(
        failure.contains("cannot listen on") && failure.contains(".s.PGSQL.5432"),
        "{failure}"
    );
}

/// A standby idle at the end of the archive with `wal_receiver_timeout = 2s`: its
/// walreceiver asks for a reply after a second of silence and ends the connection if none
/// comes within two. The stream answers every ask (besides its own keepalives every
/// 10 s), so the one connection outlives several timeouts.
fn an_idle_standby_s_pings_are_answered(major: u32) {
    let version = Version::of(major);
    let (standby, _) = standby_at_the_restore_point(&version, &[]);
    standby.query("alter system set wal_receiver_timeout = '2s'");
    standby.query("select pg_reload_conf()");
    wait_for_answer(&standby, "show wal_receiver_timeout", "2s", "the reload");
    let receiver = "select pid from pg_stat_wal_receiver where status = 'streaming'";
    let before = standby.query(receiver);
    assert!(!before.is_empty(), "not streaming:\n{}", standby.log());
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(standby.query(receiver), before, "{}", standby.log());
    let log = standby.log();
    assert!(
        !log.contains("terminating walreceiver due to timeout"),
        "{log}"
    );
}

/// One `#[test]` per function named, each run on PostgreSQL `$major`.
macro_rules! on_major {
    ($major:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test($major);
            }
        )*
    };
}

macro_rules! stream_tests {
    ($($name:ident: $major:expr,)*) => {
        $(
            mod $name {
                on_major!(
                    $major;
                    a_standby_streams_across_a_timeline_switch,
                    a_stream_killed_mid_stream_is_replaced,
                    a_corrupt_segment_is_refused_and_reported,
                    a_recovery_to_the_end_streams_and_is_promoted_there,
                    a_recovery_to_the_end_without_the_stream_is_promoted_by_wal_fetch,
                    a_stream_that_cannot_start_leaves_recovery_to_wal_fetch,
                    an_idle_standby_s_pings_are_answered,
                    only_the_owner_may_connect,
                );
            }
        )*
    };
}

stream_tests! {
    pg13: 13,
    pg15: 15,
}
