use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::pg::*;
use crate::common::*;

/// Restores the archive's latest backup into `work/<name>` with `wale backup-fetch` from
/// the store `settings` name (S3, or a cloud emulator) and starts PostgreSQL on it with
/// `restore_command = 'wale --envdir … wal-fetch'` (default prefetch), plus `extra_conf`.
pub(crate) fn restore_and_start(
    work: &Path,
    name: &str,
    settings: &[(String, String)],
    port: u16,
    extra_conf: &str,
) -> Recovery {
    let pgdata = work.join(name);
    let socket_dir = work.join(format!("{name}-sock"));
    let envdir = work.join(format!("{name}-wale.env"));
    std::fs::create_dir_all(&socket_dir).unwrap();
    std::fs::create_dir_all(&envdir).unwrap();

    // The base backup, restored by wale from S3, its tablespace mapped to a new place.
    let oid = fixture_meta("TABLESPACE_OID");
    let tablespace = work.join(format!("{name}-ts1"));
    let mut fetch = wale();
    fetch.envs(settings.iter().cloned());
    fetch.arg("backup-fetch").arg(&pgdata).arg("LATEST");
    fetch
        .arg("--tablespace")
        .arg(format!("{oid}={}", tablespace.display()));
    let restore = Run::of(fetch).expect_code(0);
    assert!(
        restore.stderr.contains("restored base_"),
        "{}",
        restore.stderr
    );

    // restore_command as an operator writes it: wale with --envdir holding the settings.
    for (key, value) in settings {
        std::fs::write(envdir.join(key), format!("{value}\n")).unwrap();
    }
    std::fs::write(envdir.join("WALE_PREFETCH_IDLE_SECONDS"), "1\n").unwrap();
    let restore_command = format!(
        "{} --envdir {} wal-fetch \"%f\" \"%p\"",
        env!("CARGO_BIN_EXE_wale"),
        envdir.display()
    );
    write_recovery_conf(&pgdata, port, &socket_dir, &restore_command, extra_conf);
    give_to_postgres(work);
    let recovery = Recovery::start(&pgdata, &socket_dir, port, work.join(format!("{name}.log")));
    recovery.wait_until_promoted(Duration::from_secs(180));
    recovery
}

pub(crate) fn work_dir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    work
}

#[test]
fn postgres_recovers_a_wale_backup_fetch_through_wale_wal_fetch_from_s3() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let work = work_dir();
    let recovery = restore_and_start(
        work.path(),
        "pgdata",
        &server.env(&archive),
        free_port(),
        "archive_mode = off\n",
    );
    let actual = recovery.psql(&["-f", fixture().join("checks.sql").to_str().unwrap()]);
    let expected = std::fs::read_to_string(fixture().join("expected.txt")).unwrap();
    assert_eq!(
        actual,
        expected,
        "recovered data differs; log:\n{}",
        recovery.log_text()
    );
    // PostgreSQL kept wale's tablespace link (tablespace_map agreed with it).
    let oid = fixture_meta("TABLESPACE_OID");
    let pgdata = work.path().join("pgdata");
    assert_eq!(
        std::fs::read_link(pgdata.join("pg_tblspc").join(&oid)).unwrap(),
        work.path().join("pgdata-ts1")
    );
    // Every archived segment from the backup's start to the end came through wale.
    let log = recovery.log_text();
    let end = fixture_meta("END_WAL_SEGMENT");
    assert!(
        log.contains(&format!("restored log file \"{end}\" from archive")),
        "{log}"
    );
    assert!(!log.contains(": ERROR: "), "wale reported errors:\n{log}");
    // restore_command's default --prefetch 8: later segments came from the prefetcher.
    assert!(
        log.contains("from the prefetch area"),
        "no prefetch hit:\n{log}"
    );
    drop(recovery);
    assert_prefetchers_leave(
        pgdata.to_str().unwrap(),
        Some(&pgdata.join("pg_wal/.wal-e")),
    );
}

#[test]
fn postgres_follows_a_timeline_switch_in_the_archive_with_prefetch_on() {
    // First life: recover, promote to timeline 2, write, and archive timeline 2 into the
    // same archive the way WAL-E's wal-push lays it out (lzop -c of the file on stdin).
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let work = work_dir();
    give_to_postgres(&archive.root());
    let wal_dir = archive.root().join("wal_005");
    let push = format!(
        "archive_mode = on\narchive_command = 'lzop -c < %p > {}/%f.lzo.tmp && mv {}/%f.lzo.tmp {}/%f.lzo'\n",
        wal_dir.display(),
        wal_dir.display(),
        wal_dir.display()
    );
    let first = restore_and_start(
        work.path(),
        "first",
        &server.env(&archive),
        free_port(),
        &push,
    );
    first.psql(&["-c", "create schema tl2; create table tl2.after_promotion as select generate_series(1, 1000) as i"]);
    first.psql(&["-c", "select pg_switch_wal()"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let archived = loop {
        let out = first.psql(&[
            "-A",
            "-t",
            "-c",
            "select last_archived_wal from pg_stat_archiver",
        ]);
        let wal = out.trim().to_string();
        // A timeline-2 segment (the history file is archived first).
        if (wal.len() == 24 && wal.starts_with("00000002")) || Instant::now() > deadline {
            break wal;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        archived.len() == 24 && archived.starts_with("00000002"),
        "timeline 2 was not archived: {archived:?}\n{}",
        first.log_text()
    );
    assert!(wal_dir.join("00000002.history.lzo").exists());
    drop(first);

    // Second life: the same backup, recovery_target_timeline = latest: wale serves the
    // history file and both timelines' segments, with the prefetcher following along.
    let second = restore_and_start(
        work.path(),
        "second",
        &server.env(&archive),
        free_port(),
        "archive_mode = off\nrecovery_target_timeline = 'latest'\n",
    );
    let count = second.psql(&["-A", "-t", "-c", "select count(*) from tl2.after_promotion"]);
    assert_eq!(count.trim(), "1000", "{}", second.log_text());
    let actual = second.psql(&["-f", fixture().join("checks.sql").to_str().unwrap()]);
    assert_eq!(
        actual,
        std::fs::read_to_string(fixture().join("expected.txt")).unwrap()
    );
    let log = second.log_text();
    assert!(
        log.contains("restored log file \"00000002.history\" from archive"),
        "{log}"
    );
    assert!(
        log.contains(&format!("restored log file \"{archived}\" from archive")),
        "{log}"
    );
    assert!(
        log.contains("from the prefetch area"),
        "no prefetch hit:\n{log}"
    );
    // A hit under PostgreSQL is handed over through pg_wal, across the switch as well.
    assert!(log.contains(" over through "), "no handover:\n{log}");
    let pgdata = work.path().join("second");
    drop(second);
    assert_prefetchers_leave(
        pgdata.to_str().unwrap(),
        Some(&pgdata.join("pg_wal/.wal-e")),
    );
}
