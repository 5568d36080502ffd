//! `wale restore`, `status` and `promote` on a Heroku-like archive made by real WAL-E from
//! a real PostgreSQL 15 (`fixtures/wale-heroku`: settings above the defaults, a vendor
//! preload library and GUC, `pg_wal` a symlink, a temp tablespace holding a table, two
//! timelines, a named restore point), run against a real PostgreSQL.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::pg::*;
use crate::common::*;

fn heroku() -> PathBuf {
    repo().join("fixtures/wale-heroku")
}

fn heroku_meta(key: &str) -> String {
    meta_of(&heroku(), key)
}

/// A scratch area readable by the `postgres` user: the archive (file://), the data
/// directory and whatever wale puts beside it.
struct Site {
    work: tempfile::TempDir,
}

impl Site {
    /// The Heroku-like archive with only the WAL objects `keep` accepts.
    fn new(keep: impl Fn(&str) -> bool) -> Site {
        let work = tempfile::tempdir().unwrap();
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let site = Site { work };
        copy_tree(
            &heroku().join("archive/basebackups_005"),
            &site.archive().join("basebackups_005"),
        );
        std::fs::create_dir_all(site.archive().join("wal_005")).unwrap();
        for name in wal_objects() {
            if keep(&name) {
                site.add_wal(&name);
            }
        }
        std::fs::create_dir_all(site.sock()).unwrap();
        give_to_postgres(&site.sock());
        site
    }

    fn add_wal(&self, name: &str) {
        let file = format!("{name}.lzo");
        std::fs::copy(
            heroku().join("archive/wal_005").join(&file),
            self.archive().join("wal_005").join(&file),
        )
        .unwrap();
    }

    fn archive(&self) -> PathBuf {
        self.work.path().join("archive")
    }

    /// The data directory, below directories that do not exist yet (as
    /// `/var/lib/postgresql/15/main` on a fresh machine).
    fn pgdata(&self) -> PathBuf {
        self.work.path().join("srv/postgresql/main")
    }

    fn sock(&self) -> PathBuf {
        self.work.path().join("sock")
    }

    /// `wale` with the archive as its file:// prefix.
    fn wale(&self) -> std::process::Command {
        let mut cmd = wale();
        cmd.env(
            "WALE_FILE_PREFIX",
            format!("file://{}", self.archive().display()),
        );
        cmd
    }

    /// `wale restore PGDATA …` with a private socket directory and `port`.
    fn restore(&self, port: u16, args: &[&str]) -> Run {
        let mut cmd = self.wale();
        cmd.arg("restore").arg(self.pgdata()).args(args);
        cmd.args(["--port", &port.to_string(), "--set"])
            .arg(format!("unix_socket_directories={}", self.sock().display()));
        Run::of(cmd)
    }

    /// `wale status --json`, with no prefix given: it finds the envdir restore wrote.
    fn status(&self) -> serde_json::Value {
        let mut cmd = wale();
        cmd.arg("status").arg(self.pgdata()).arg("--json");
        status_json(cmd)
    }

    /// `wale status --format prometheus`, which must exit `code`.
    fn metrics(&self, code: i32) -> String {
        let mut cmd = wale();
        cmd.arg("status")
            .arg(self.pgdata())
            .args(["--format", "prometheus"]);
        Run::of(cmd).expect_code(code).stdout_text()
    }

    fn psql(&self, port: u16, sql_args: &[&str]) -> String {
        let mut cmd = as_postgres(&pg_bin().join("psql"));
        cmd.args(["-X", "-q", "-h"]).arg(self.sock());
        cmd.args(["-p", &port.to_string(), "-d", "postgres"])
            .args(sql_args);
        run_ok(cmd, "psql")
    }

    fn checks(&self, port: u16) -> String {
        let checks = self.work.path().join("checks.sql");
        std::fs::copy(heroku().join("checks.sql"), &checks).unwrap();
        std::fs::set_permissions(&checks, std::fs::Permissions::from_mode(0o644)).unwrap();
        self.psql(port, &["-f", checks.to_str().unwrap()])
    }

    fn wait_for_status(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "{what}: not reached in {limit:?}; status {status:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.pgdata().join("log/postgresql.log")).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if self.pgdata().join("postmaster.pid").exists() {
            let mut stop = as_postgres(&pg_bin().join("pg_ctl"));
            stop.arg("-D")
                .arg(self.pgdata())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        }
    }
}

/// The archive's WAL objects (without `.lzo`) in the order WAL-E wrote them.
fn wal_objects() -> Vec<String> {
    std::fs::read_to_string(heroku().join("wal-segments.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

fn users_is_root() -> bool {
    wale::users::effective_uid() == 0
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(heroku().join(name)).unwrap()
}

/// Lines of a configuration file that are not comments.
fn live_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_heroku_like_archive_becomes_a_hot_standby_that_follows_catches_up_and_promotes() {
    // The archive as it stood when timeline 1 ended; timeline 2 arrives later.
    let tl1_last = heroku_meta("TL1_LAST_WAL_SEGMENT");
    let site = Site::new(|name| {
        name.starts_with("00000001") && name.len() == 24 && name <= tl1_last.as_str()
    });
    let port = free_port();
    let run = site
        .restore(port, &["LATEST", "--standby", "--start"])
        .expect_code(0);
    assert!(run.stderr.contains("heroku_gatekeeper"), "{}", run.stderr);
    assert!(run.stderr.contains("heroku.vendor_flag"), "{}", run.stderr);
    // Its last lines say how to run it; the connect line works as printed.
    let last: Vec<&str> = run.stderr.lines().rev().take(4).collect();
    for what in ["stop:", "restart:", "at boot:", "connect:"] {
        assert!(
            last.iter()
                .any(|l| l.starts_with(&format!("wale: INFO: {what}"))),
            "no {what} line at the end:\n{}",
            run.stderr
        );
    }
    let stop = last.iter().find(|l| l.contains("stop:")).unwrap();
    assert!(
        stop.contains("pg_ctl -D") && stop.contains("stop"),
        "{stop}"
    );
    let connect = last
        .iter()
        .find_map(|l| l.strip_prefix("wale: INFO: connect:"))
        .unwrap()
        .trim();
    assert!(
        connect.contains(&format!("-p {port}")) && connect.contains("psql"),
        "{connect}"
    );
    let answer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{connect} -X -A -t -d postgres -c 'select 42'"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&answer.stdout).trim(),
        "42",
        "{connect}: {}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert!(
        run.stderr.contains("relation files"),
        "the ephemeral tablespace holds a table: {}",
        run.stderr
    );

    let pgdata = site.pgdata();
    // Layout: a real pg_wal, the tablespace outside PGDATA, the envdir outside too.
    assert!(
        std::fs::symlink_metadata(pgdata.join("pg_wal"))
            .unwrap()
            .is_dir()
    );
    let oid = heroku_meta("TABLESPACE_OID");
    let link = std::fs::read_link(pgdata.join("pg_tblspc").join(&oid)).unwrap();
    assert!(!link.starts_with(&pgdata), "{}", link.display());
    let parent_mode = std::fs::metadata(pgdata.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        parent_mode & 0o777,
        0o755,
        "directories on the way let the owner through"
    );
    let envdir = PathBuf::from(format!("{}.wale-env", pgdata.display()));
    let mode = std::fs::metadata(&envdir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(envdir.join("WALE_FILE_PREFIX").is_file());
    // Configuration: the primary's settings, no archiving, nothing of the vendor's paths.
    let conf = live_lines(&pgdata.join("postgresql.conf")).join("\n");
    for (name, key) in [
        ("max_connections", "MAX_CONNECTIONS"),
        ("max_worker_processes", "MAX_WORKER_PROCESSES"),
        ("max_wal_senders", "MAX_WAL_SENDERS"),
        ("max_prepared_transactions", "MAX_PREPARED_TRANSACTIONS"),
        ("max_locks_per_transaction", "MAX_LOCKS_PER_TRANSACTION"),
    ] {
        assert!(
            conf.contains(&format!("{name} = {}", heroku_meta(key))),
            "{name}: {conf}"
        );
    }
    assert!(conf.contains("archive_mode = off"));
    let auto = live_lines(&pgdata.join("postgresql.auto.conf")).join("\n");
    assert!(
        !auto.contains("heroku_gatekeeper") && auto.contains("pg_stat_statements"),
        "{auto}"
    );
    assert!(auto.contains("heroku.vendor_flag"), "{auto}");
    assert!(pgdata.join("postgresql.auto.conf.wale-original").is_file());
    for source_path in heroku_meta("SOURCE_PATHS").split_whitespace() {
        for live in [&conf, &auto] {
            assert!(!live.contains(source_path), "{source_path} in {live}");
        }
        let map = std::fs::read_to_string(pgdata.join("tablespace_map")).unwrap_or_default();
        assert!(!map.contains(source_path), "tablespace_map: {map}");
    }

    // Caught up with timeline 1, and a hot standby answers with the recorded data.
    let status = site.wait_for_status("caught up on timeline 1", Duration::from_secs(120), |s| {
        s["caught_up"] == true
    });
    assert_eq!(status["in_recovery"], true);
    assert_eq!(status["standby"], true);
    assert_eq!(status["timeline"], 1);
    assert_eq!(status["archive_last_segment"], tl1_last.as_str());
    assert_eq!(status["replay_segment"], tl1_last.as_str());
    assert_eq!(status["lag_segments"], 0);
    assert_eq!(status["paused"], false);
    assert_eq!(status_code_for(&status), 0);
    let metrics = site.metrics(0);
    let label = format!("{{pgdata=\"{}\"}}", pgdata.display());
    for sample in [
        "wale_server_running{} 1",
        "wale_in_recovery{} 1",
        "wale_caught_up{} 1",
        "wale_paused_at_target{} 0",
        "wale_lag_segments{} 0",
    ] {
        let sample = sample.replace("{}", &label);
        assert!(
            metrics.contains(&format!("\n{sample}\n")),
            "{sample}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE wale_lag_bytes gauge\n")
            && metrics.contains(&format!("\nwale_lag_bytes{label} ")),
        "{metrics}"
    );
    assert_eq!(site.checks(port), expected("expected-tl1-end.txt"));

    // The archive grows: the new timeline and its segments. At once status says behind.
    for name in wal_objects() {
        if !site
            .archive()
            .join("wal_005")
            .join(format!("{name}.lzo"))
            .exists()
        {
            site.add_wal(&name);
        }
    }
    let behind = site.status();
    assert_eq!(behind["caught_up"], false, "{behind:#}");
    assert_eq!(status_code_for(&behind), 3, "{behind:#}");
    let status = site.wait_for_status("caught up on timeline 2", Duration::from_secs(120), |s| {
        s["caught_up"] == true && s["timeline"] == 2
    });
    assert_eq!(
        status["archive_last_segment"],
        heroku_meta("END_WAL_SEGMENT").as_str()
    );
    assert_eq!(site.checks(port), expected("expected.txt"));

    // Cutover.
    let mut promote = wale();
    promote.arg("promote").arg(&pgdata);
    let run = Run::of(promote).expect_code(0);
    // Timeline 2 ended in the archive; promotion starts timeline 3.
    assert!(
        run.stderr.contains("accepts writes on timeline 3"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout_text().contains("fresh base backup"),
        "{}",
        run.stdout_text()
    );
    site.psql(
        port,
        &[
            "-c",
            "create table after_cutover (id int); insert into after_cutover values (1)",
        ],
    );
    let after = site.checks(port);
    assert!(
        after.starts_with("tables|accounts,after_cutover,events,rounds,scratch\n"),
        "{after}"
    );
    assert_eq!(
        after.lines().skip(1).collect::<Vec<_>>(),
        expected("expected.txt").lines().skip(1).collect::<Vec<_>>()
    );
    assert!(
        !live_lines(&pgdata.join("postgresql.conf"))
            .iter()
            .any(|l| l.starts_with("restore_command")),
        "restore_command must be gone after promotion"
    );
    let status = site.status();
    assert_eq!(status["in_recovery"], false);
    assert_eq!(status["caught_up"], false);
    assert_eq!(
        status_code_for(&status),
        7,
        "promoted: running, not in recovery"
    );

    // Stopped: "not running", for scripts and for the metrics.
    let mut stop = as_postgres(&pg_bin().join("pg_ctl"));
    stop.arg("-D")
        .arg(&pgdata)
        .args(["-m", "fast", "-w", "stop"]);
    run_ok(stop, "pg_ctl stop");
    let stopped = site.status();
    assert_eq!(status_code_for(&stopped), 5, "{stopped:#}");
    let metrics = site.metrics(5);
    assert!(
        metrics.contains(&format!("\nwale_server_running{label} 0\n"))
            && !metrics.contains("\nwale_lag_segments{"),
        "{metrics}"
    );
}

#[test]
fn a_point_in_time_restore_reaches_a_named_restore_point_on_the_second_timeline() {
    let site = Site::new(|_| true);
    let port = free_port();
    let name = heroku_meta("RESTORE_POINT_NAME");
    site.restore(
        port,
        &[
            "--target-name",
            &name,
            "--target-action",
            "promote",
            "--start",
        ],
    )
    .expect_code(0);
    let started = Instant::now();
    while site
        .psql(port, &["-A", "-t", "-c", "select pg_is_in_recovery()"])
        .trim()
        != "f"
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not promoted; log:\n{}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(site.checks(port), expected("expected-restore-point.txt"));
    assert!(site.log().contains("recovery stopping"), "{}", site.log());
}

/// The case: a point-in-time restore paused at a restore point on timeline 2.
/// `status` names the timeline replay is on (2, although no restartpoint on 2 has
/// happened), its segment and the archive's end on it, no "newer" timeline (2 is its
/// own), "paused at the recovery target"; `promote` ends recovery there without --force.
#[test]
fn a_point_in_time_restore_paused_on_the_second_timeline_is_reported_and_promoted() {
    let site = Site::new(|_| true);
    let port = free_port();
    let name = heroku_meta("RESTORE_POINT_NAME");
    site.restore(port, &["--target-name", &name, "--start"])
        .expect_code(0);
    let status = site.wait_for_status("paused at the target", Duration::from_secs(120), |s| {
        s["paused_at_target"] == true
    });
    assert_eq!(status["timeline"], 2, "{status:#}");
    assert_eq!(
        status["replay_segment"],
        heroku_meta("RESTORE_POINT_WAL_SEGMENT").as_str(),
        "{status:#}"
    );
    assert_eq!(
        status["archive_last_segment"],
        heroku_meta("END_WAL_SEGMENT").as_str(),
        "{status:#}"
    );
    assert!(status["newer_timeline"].is_null(), "{status:#}");
    let mut promote = wale();
    promote.arg("promote").arg(site.pgdata());
    let run = Run::of(promote).expect_code(0);
    assert!(run.stderr.contains("recovery target"), "{}", run.stderr);
    assert_eq!(site.checks(port), expected("expected-restore-point.txt"));
}

/// Refusals that need no server: each a clear one-line error, nothing written.
#[test]
fn restore_refuses_with_one_clear_line() {
    let start = heroku_meta("BACKUP_START_WAL_SEGMENT");
    let port = free_port();
    let check = |site: &Site, args: &[&str], code: i32, needle: &str| {
        let run = site.restore(port, args).expect_code(code);
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains(needle),
            "wanted {needle:?}: {}",
            run.stderr
        );
    };
    let nothing_written = |site: &Site| {
        assert!(
            !site.pgdata().exists() || std::fs::read_dir(site.pgdata()).unwrap().next().is_none(),
            "{} was written",
            site.pgdata().display()
        );
    };

    let site = Site::new(|_| true);
    check(
        &site,
        &["base_000000010000000000000009_00000040"],
        1,
        "no backup named",
    );
    check(
        &site,
        &["--pg-bin", "/nonexistent"],
        2,
        "install postgresql-15",
    );
    check(
        &site,
        &["--target-timeline", "sideways"],
        2,
        "--target-timeline",
    );
    check(
        &site,
        &["--standby", "--target-name", "x"],
        2,
        "makes no sense",
    );
    check(
        &site,
        &["--tablespace", "99999=/tmp/x"],
        2,
        "has no tablespace 99999",
    );
    let inside = format!(
        "{}={}/ts",
        heroku_meta("TABLESPACE_OID"),
        site.pgdata().display()
    );
    check(
        &site,
        &["--tablespace", &inside],
        2,
        "outside the data directory",
    );
    check(
        &site,
        &["--target-time", "1999-01-01 00:00:00+00"],
        1,
        "stopped before --target-time",
    );
    nothing_written(&site);

    std::fs::create_dir_all(site.pgdata()).unwrap();
    std::fs::write(site.pgdata().join("PG_VERSION"), "15\n").unwrap();
    check(&site, &[], 2, "not empty");
    std::fs::write(
        site.pgdata().join("postmaster.pid"),
        format!(
            "{}\n{}\n0\n5432\n/tmp\n",
            std::process::id(),
            site.pgdata().display()
        ),
    )
    .unwrap();
    check(&site, &[], 2, "is running on it");
    std::fs::remove_dir_all(site.pgdata()).unwrap();

    // The archive lacks the segment the backup starts in.
    let site = Site::new(|name| name != start);
    check(&site, &[], 1, "cannot be made consistent");
    nothing_written(&site);

    // An incomplete backup (no sentinel).
    let site = Site::new(|_| true);
    let backup = heroku_meta("BACKUP_NAME");
    std::fs::remove_file(
        site.archive()
            .join("basebackups_005")
            .join(format!("{backup}_backup_stop_sentinel.json")),
    )
    .unwrap();
    check(&site, &[&backup], 1, "no complete backups");
    nothing_written(&site);

    // Another segment under the start segment's name: caught before anything is written.
    let site = Site::new(|_| true);
    let other = fixture().join("archive/wal_005/000000010000000000000006.lzo");
    std::fs::copy(
        &other,
        site.archive().join("wal_005").join(format!("{start}.lzo")),
    )
    .unwrap();
    check(&site, &[], 202, "is another segment");
    nothing_written(&site);

    // WAL of another cluster at the right address (a wrong prefix): caught from the page
    // header's system identifier against pg_control, before any replay.
    let site = Site::new(|_| true);
    let mut segment = lzop_decompress(&other);
    let start_lsn = u64::from_str_radix(&start[16..], 16).unwrap() * (16 << 20);
    segment[8..16].copy_from_slice(&start_lsn.to_le_bytes());
    std::fs::write(
        site.archive().join("wal_005").join(format!("{start}.lzo")),
        lzop_compress(&segment, &[]),
    )
    .unwrap();
    check(&site, &[], 202, "belongs to another cluster");
    nothing_written(&site);

    // A hot-standby setting below the primary's.
    let site = Site::new(|_| true);
    check(
        &site,
        &["--set", "max_connections=100"],
        2,
        "the primary ran with max_connections = 500",
    );
    // Refusals after the fetch roll back what the run wrote, so the command can be rerun.
    nothing_written(&site);
    for beside in ["_tablespaces", ".wale-env"] {
        let path = PathBuf::from(format!("{}{beside}", site.pgdata().display()));
        assert!(!path.exists(), "{} is left", path.display());
    }

    // What was beside PGDATA before is never touched: a tablespace root holding other
    // things survives a rolled-back run, and an envdir wale did not make is refused.
    let root = PathBuf::from(format!("{}_tablespaces", site.pgdata().display()));
    std::fs::create_dir_all(root.join("other")).unwrap();
    std::fs::write(root.join("other/keep.txt"), "mine").unwrap();
    check(
        &site,
        &["--set", "max_connections=100"],
        2,
        "the primary ran with max_connections = 500",
    );
    assert_eq!(
        std::fs::read_to_string(root.join("other/keep.txt")).unwrap(),
        "mine"
    );
    assert!(!root.join(heroku_meta("TABLESPACE_OID")).exists());
    std::fs::remove_dir_all(&root).unwrap();
    let envdir = PathBuf::from(format!("{}.wale-env", site.pgdata().display()));
    std::fs::create_dir_all(&envdir).unwrap();
    std::fs::write(envdir.join("AWS_SECRET_ACCESS_KEY"), "theirs").unwrap();
    check(&site, &[], 2, "already exists");
    assert_eq!(
        std::fs::read_to_string(envdir.join("AWS_SECRET_ACCESS_KEY")).unwrap(),
        "theirs"
    );
    std::fs::remove_dir_all(&envdir).unwrap();

    // An envdir the server's owner cannot read would leave a standby that fetches nothing.
    if users_is_root() {
        let site = Site::new(|_| true);
        let envdir = site.work.path().join("env");
        std::fs::create_dir(&envdir).unwrap();
        std::fs::set_permissions(&envdir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            envdir.join("WALE_FILE_PREFIX"),
            format!("file://{}\n", site.archive().display()),
        )
        .unwrap();
        let mut cmd = wale();
        cmd.arg("--envdir")
            .arg(&envdir)
            .arg("restore")
            .arg(site.pgdata());
        let run = Run::of(cmd).expect_code(2);
        assert!(run.stderr.contains("cannot read it"), "{}", run.stderr);
        nothing_written(&site);

        // Likewise a secret key file for an encrypted archive.
        let key = site.work.path().join("key.asc");
        std::fs::write(&key, "armored").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cmd = site.wale();
        cmd.env("WALE_PGP_KEY_PATH", &key)
            .arg("restore")
            .arg(site.pgdata());
        let run = Run::of(cmd).expect_code(2);
        assert!(
            run.stderr.contains("WALE_PGP_KEY_PATH=") && run.stderr.contains("cannot read it"),
            "{}",
            run.stderr
        );
        nothing_written(&site);
    }
}

/// Under a standby, a store failure exits 1 (PostgreSQL retries) and is recorded for
/// `status`; in archive recovery it stays above 125; configuration errors too.
#[test]
fn wal_fetch_in_standby_mode_keeps_the_standby_alive_and_records_why() {
    let site = Site::new(|_| true);
    let data = site.work.path().join("data");
    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    let segment = heroku_meta("BACKUP_START_WAL_SEGMENT");
    std::fs::write(
        site.archive()
            .join("wal_005")
            .join(format!("{segment}.lzo")),
        b"not lzop",
    )
    .unwrap();
    let fetch = |cwd: &Path| {
        let mut cmd = site.wale();
        cmd.current_dir(cwd).args([
            "wal-fetch",
            "--prefetch",
            "0",
            &segment,
            "pg_wal/RECOVERYXLOG",
        ]);
        Run::of(cmd)
    };
    fetch(&data).expect_code(202);
    std::fs::write(data.join("standby.signal"), "").unwrap();
    let run = fetch(&data).expect_code(1);
    assert!(run.stderr.contains("standby mode"), "{}", run.stderr);
    let recorded = std::fs::read_to_string(data.join("pg_wal/.wale-status/last-error")).unwrap();
    assert!(recorded.contains(&segment), "{recorded}");

    // At the end of the archive a standby asks for the next segment and the next
    // timeline's history every few seconds: each "not found" is said once per position.
    for name in ["0000000200000000000000FF", "00000009.history"] {
        let mut cmd = site.wale();
        cmd.current_dir(&data)
            .args(["wal-fetch", "--prefetch", "0", name, "pg_wal/RECOVERYXLOG"]);
        let first = Run::of(cmd).expect_code(1);
        assert!(first.stderr.contains("INFO"), "{}", first.stderr);
        let mut cmd = site.wale();
        cmd.current_dir(&data)
            .args(["wal-fetch", "--prefetch", "0", name, "pg_wal/RECOVERYXLOG"]);
        let again = Run::of(cmd).expect_code(1);
        assert_eq!(again.stderr, "", "a repeated not-found is quiet");
    }

    let mut broken = wale();
    broken
        .current_dir(site.work.path())
        .args(["wal-fetch", &segment, "x"]);
    Run::of(broken).expect_code(204);
    let mut usage = wale();
    usage.args(["wal-fetch", "--no-such-flag", &segment, "x"]);
    Run::of(usage).expect_code(204);
}

/// wale's `pg_control` reader agrees with PostgreSQL's own `pg_controldata` on the real
/// control file in the Heroku-like backup (read straight from its tar partition).
#[test]
fn pg_control_is_read_as_pg_controldata_reads_it() {
    let backup = heroku_meta("BACKUP_NAME");
    let partition = heroku()
        .join("archive/basebackups_005")
        .join(&backup)
        .join("tar_partitions/part_00000000.tar.lzo");
    let file = std::fs::File::open(partition).unwrap();
    let mut tar = wale::tar::Archive::new(wale::lzop::Decoder::new(std::io::BufReader::new(file)));
    let mut bytes = None;
    while let Some(header) = tar.next_header().unwrap() {
        if header.display_path() == "global/pg_control" {
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = tar.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            bytes = Some(data);
        }
    }
    let control =
        wale::pg::control::ControlData::parse(&bytes.expect("global/pg_control")).unwrap();
    let reference = std::fs::read_to_string(heroku().join("pg_controldata.txt")).unwrap();
    let field = |label: &str| {
        reference
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("{label} not in pg_controldata.txt"))
            .trim()
            .to_string()
    };
    assert_eq!(
        control.system_identifier.to_string(),
        field("Database system identifier:")
    );
    assert_eq!(
        control.catalog_version.to_string(),
        field("Catalog version number:")
    );
    assert_eq!(control.wal_level.to_string(), field("wal_level setting:"));
    let settings = control.settings;
    assert_eq!(
        settings.max_connections.to_string(),
        field("max_connections setting:")
    );
    assert_eq!(
        settings.max_worker_processes.to_string(),
        field("max_worker_processes setting:")
    );
    assert_eq!(
        settings.max_wal_senders.unwrap().to_string(),
        field("max_wal_senders setting:")
    );
    assert_eq!(
        settings.max_prepared_transactions.to_string(),
        field("max_prepared_xacts setting:")
    );
    assert_eq!(
        settings.max_locks_per_transaction.to_string(),
        field("max_locks_per_xact setting:")
    );
    assert_eq!(
        control.segment_size.to_string(),
        field("Bytes per WAL segment:")
    );
    assert_eq!(
        control.block_size.to_string(),
        field("Database block size:")
    );
    assert_eq!(
        control.data_checksums,
        field("Data page checksum version:") != "0"
    );
    assert_eq!(
        control.major_version.to_string(),
        heroku_meta("PG_VERSION").split('.').next().unwrap()
    );
}

/// `--cluster NAME` registers the restore with Debian's postgresql-common, as
/// `pg_restorecluster` would: `pg_lsclusters` lists it with its data directory and port.
#[test]
#[cfg_attr(
    not(wale_tests_as_root),
    ignore = "needs root to write /etc/postgresql"
)]
fn a_restore_can_be_registered_as_a_debian_cluster() {
    assert!(
        Path::new("/etc/postgresql-common").is_dir(),
        "postgresql-common is needed (it comes with postgresql-15)"
    );
    let site = Site::new(|_| true);
    let name = format!("wale-test-{}", std::process::id());
    let etc = PathBuf::from(format!("/etc/postgresql/15/{name}"));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(etc.clone());
    let port = free_port();
    site.restore(port, &["--standby", "--cluster", &name])
        .expect_code(0);
    let conf = live_lines(&etc.join("postgresql.conf")).join("\n");
    assert!(
        conf.contains(&format!("data_directory = '{}'", site.pgdata().display())),
        "{conf}"
    );
    let listed = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{name} not in pg_lsclusters:\n{listed}"));
    assert!(line.contains(&port.to_string()), "{line}");
    assert!(
        line.contains(&site.pgdata().display().to_string()),
        "{line}"
    );
}

/// Rewrites the backup's tar partition in place: `edit` sees each member's name, header
/// and data (sizes must not change); headers are re-checksummed and the partition
/// recompressed with the real lzop.
fn edit_backup(site: &Site, edit: impl Fn(&str, &mut [u8], &mut [u8])) {
    let partition = site
        .archive()
        .join("basebackups_005")
        .join(heroku_meta("BACKUP_NAME"))
        .join("tar_partitions/part_00000000.tar.lzo");
    let mut tar = lzop_decompress(&partition);
    let mut offset = 0;
    while offset + 512 <= tar.len() && tar[offset..offset + 512].iter().any(|&b| b != 0) {
        let (header, rest) = tar[offset..].split_at_mut(512);
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).into_owned();
        let size_text = String::from_utf8_lossy(&header[124..136]).into_owned();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .unwrap_or(0);
        edit(&name, header, &mut rest[..size]);
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        offset += 512 + size.div_ceil(512) * 512;
    }
    std::fs::write(&partition, lzop_compress(&tar, &[])).unwrap();
}

/// What comes back from the archive is checked before it is configured: a `PG_VERSION`
/// that is not the backup's server, a missing `backup_label`. Each refusal rolls back.
#[test]
fn a_restored_tree_that_does_not_match_is_refused_and_rolled_back() {
    let port = free_port();
    let site = Site::new(|_| true);
    edit_backup(&site, |name, _, data| {
        if name == "PG_VERSION" {
            data.copy_from_slice(b"14\n");
        }
    });
    let run = site.restore(port, &[]).expect_code(202);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("PG_VERSION: says \"14\""),
        "{}",
        run.stderr
    );
    assert!(!site.pgdata().exists(), "the failed restore is rolled back");

    let site = Site::new(|_| true);
    edit_backup(&site, |name, header, _| {
        if name == "backup_label" {
            header[..12].copy_from_slice(b"backup_labex");
        }
    });
    let run = site.restore(port, &[]).expect_code(202);
    assert!(
        run.stderr.contains("backup_label: missing"),
        "{}",
        run.stderr
    );
    assert!(!site.pgdata().exists(), "the failed restore is rolled back");
}

/// Free space is checked against the sentinel's expanded size before anything is written.
#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn restore_refuses_a_file_system_without_room_for_the_backup() {
    let site = Site::new(|_| true);
    let fs = Tmpfs::mount("8m", false);
    let pgdata = fs.path.join("main");
    let mut cmd = site.wale();
    cmd.arg("restore").arg(&pgdata);
    let run = Run::of(cmd).expect_code(2);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("but the backup expands to"),
        "{}",
        run.stderr
    );
    assert!(!pgdata.exists());
}
