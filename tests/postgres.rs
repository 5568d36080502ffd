use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// The PostgreSQL server binaries of the fixture's major version.
fn pg_bin() -> PathBuf {
    let major = fixture_meta("PG_VERSION")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    assert!(
        bin.join("postgres").exists(),
        "PostgreSQL {major} is needed (apt-get install postgresql-{major}); scripts/test.sh installs it"
    );
    bin
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gives a tree to the `postgres` user when running as root.
fn give_to_postgres(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("postgres:postgres").arg(path);
        run_ok(chown, "chown");
    }
}

/// A PostgreSQL data directory being recovered; stopped on drop.
struct Recovery {
    bin: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Recovery {
    fn psql(&self, args: &[&str]) -> String {
        let mut cmd = as_postgres(&self.bin.join("psql"));
        cmd.args(["-X", "-q", "-h"]).arg(&self.socket_dir);
        cmd.args(["-p", &self.port.to_string(), "-d", "postgres"])
            .args(args);
        run_ok(cmd, "psql")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until_promoted(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut cmd = as_postgres(&self.bin.join("psql"));
            cmd.args(["-X", "-q", "-A", "-t", "-h"])
                .arg(&self.socket_dir);
            cmd.args([
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-c",
                "select pg_is_in_recovery()",
            ]);
            if let Ok(out) = cmd.output()
                && String::from_utf8_lossy(&out.stdout).trim() == "f"
            {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "recovery did not finish; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Recovery {
    fn drop(&mut self) {
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.output();
    }
}

/// Restores the archive's latest backup into `work/<name>` with `wale backup-fetch` from
/// S3 and starts PostgreSQL on it with `restore_command = 'wale --envdir … wal-fetch'`
/// (default prefetch), plus `extra_conf`.
fn restore_and_start(
    work: &Path,
    name: &str,
    archive: &Archive,
    server: &S3Server,
    port: u16,
    extra_conf: &str,
) -> Recovery {
    let bin = pg_bin();
    let pgdata = work.join(name);
    let socket_dir = work.join(format!("{name}-sock"));
    let envdir = work.join(format!("{name}-wale.env"));
    std::fs::create_dir_all(&socket_dir).unwrap();
    std::fs::create_dir_all(&envdir).unwrap();

    // The base backup, restored by wale from S3, its tablespace mapped to a new place.
    let oid = fixture_meta("TABLESPACE_OID");
    let tablespace = work.join(format!("{name}-ts1"));
    let mut fetch = wale_for(archive, Backend::S3, Some(server));
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

    // restore_command as an operator writes it: wale with --envdir holding S3 settings.
    for (key, value) in server.env(archive) {
        std::fs::write(envdir.join(key), format!("{value}\n")).unwrap();
    }
    std::fs::write(envdir.join("WALE_PREFETCH_IDLE_SECONDS"), "1\n").unwrap();
    let conf = format!(
        "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
         restore_command = '{} --envdir {} wal-fetch \"%f\" \"%p\"'\nlog_line_prefix = '%m [%p] '\n{extra_conf}",
        socket_dir.display(),
        env!("CARGO_BIN_EXE_wale"),
        envdir.display()
    );
    std::fs::write(pgdata.join("postgresql.conf"), conf).unwrap();
    std::fs::write(pgdata.join("pg_hba.conf"), "local all all trust\n").unwrap();
    std::fs::write(pgdata.join("pg_ident.conf"), "").unwrap();
    std::fs::write(pgdata.join("recovery.signal"), "").unwrap();
    std::fs::set_permissions(&pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    give_to_postgres(work);

    let recovery = Recovery {
        bin: bin.clone(),
        pgdata: pgdata.clone(),
        socket_dir,
        port,
        log: work.join(format!("{name}.log")),
    };
    let mut start = as_postgres(&bin.join("pg_ctl"));
    start
        .arg("-D")
        .arg(&pgdata)
        .arg("-l")
        .arg(&recovery.log)
        .args(["-w", "-t", "120", "start"]);
    let started = start.output().unwrap();
    assert!(
        started.status.success(),
        "pg_ctl start failed; log:\n{}",
        recovery.log_text()
    );
    recovery.wait_until_promoted(Duration::from_secs(180));
    recovery
}

fn work_dir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    work
}

/// Waits until the prefetcher of `pgdata` has left, taking its files and lock with it.
fn assert_prefetcher_gone(pgdata: &Path) {
    let area = pgdata.join("pg_wal/.wal-e");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (area.exists() || !prefetchers_for(pgdata.to_str().unwrap()).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!area.exists(), "the prefetch area outlived the prefetcher");
    assert!(
        prefetchers_for(pgdata.to_str().unwrap()).is_empty(),
        "a prefetcher is still running"
    );
}

fn port_for(slot: u16) -> u16 {
    20000 + (std::process::id() % 10000) as u16 * 2 + slot
}

#[test]
fn postgres_recovers_a_wale_backup_fetch_through_wale_wal_fetch_from_s3() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let work = work_dir();
    let recovery = restore_and_start(
        work.path(),
        "pgdata",
        &archive,
        &server,
        port_for(0),
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
    assert_prefetcher_gone(&pgdata);
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
    let first = restore_and_start(work.path(), "first", &archive, &server, port_for(0), &push);
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
        &archive,
        &server,
        port_for(1),
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
    let pgdata = work.path().join("second");
    drop(second);
    assert_prefetcher_gone(&pgdata);
}
