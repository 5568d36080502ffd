//! The version matrix: for each PostgreSQL major 10 to 18, a real WAL-E 1.1.1 archive of a
//! real cluster of that major (`fixtures/matrix/pgNN`; 1 MiB segments on 12, 64 MiB on
//! 17, 16 MiB elsewhere), restored with the server binaries of that major in a
//! non-standard directory (`scripts/install-pg-matrix.sh`) that only `restore` is told:
//! a hot standby that catches up, follows the archive as it grows and is promoted; and a
//! point-in-time restore that pauses at a named restore point and is promoted there.
//! `status` and `promote` find the binaries by themselves.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::pg::*;
use crate::common::*;

/// One major's archive and server binaries.
pub(crate) struct Version {
    major: u32,
    fixture: PathBuf,
    bin: PathBuf,
}

impl Version {
    pub(crate) fn of(major: u32) -> Version {
        let fixture = repo().join(format!("fixtures/matrix/pg{major}"));
        let root = std::env::var_os("WALE_PG_MATRIX")
            .map_or_else(|| PathBuf::from("/var/tmp/wale-pg"), PathBuf::from);
        let bin = root.join(major.to_string()).join("bin");
        assert!(
            bin.join("postgres").is_file(),
            "PostgreSQL {major} binaries are missing from {}: run scripts/install-pg-matrix.sh (scripts/test.sh does)",
            bin.display()
        );
        Version {
            major,
            fixture,
            bin,
        }
    }

    pub(crate) fn meta(&self, key: &str) -> String {
        meta_of(&self.fixture, key)
    }

    pub(crate) fn words(&self, key: &str) -> Vec<String> {
        self.meta(key)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

/// A scratch area the `postgres` user can read: the archive, the data directory beside
/// it, a private socket directory.
pub(crate) struct Site<'a> {
    version: &'a Version,
    work: tempfile::TempDir,
    port: u16,
    /// Where `basebackups_005/` and `wal_005/` are written.
    archive_root: PathBuf,
    /// How `wale` finds the archive (the prefix and its settings).
    pub(crate) archive_env: Vec<(String, String)>,
}

impl<'a> Site<'a> {
    /// The archive with the base backups and the WAL objects `keep` accepts.
    pub(crate) fn new(version: &'a Version, keep: impl Fn(&str) -> bool) -> Site<'a> {
        let work = tempfile::tempdir().unwrap();
        let archive_root = work.path().join("archive");
        let archive_env = vec![(
            "WALE_FILE_PREFIX".to_string(),
            format!("file://{}", archive_root.display()),
        )];
        Site::in_archive(version, keep, work, archive_root, archive_env)
    }

    /// The same, with the archive written under `archive_root` and found through
    /// `archive_env` (an S3 server's, say).
    pub(crate) fn on(
        version: &'a Version,
        keep: impl Fn(&str) -> bool,
        archive_root: PathBuf,
        archive_env: Vec<(String, String)>,
    ) -> Site<'a> {
        let work = tempfile::tempdir().unwrap();
        Site::in_archive(version, keep, work, archive_root, archive_env)
    }

    fn in_archive(
        version: &'a Version,
        keep: impl Fn(&str) -> bool,
        work: tempfile::TempDir,
        archive_root: PathBuf,
        archive_env: Vec<(String, String)>,
    ) -> Site<'a> {
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let site = Site {
            version,
            work,
            port: free_port(),
            archive_root,
            archive_env,
        };
        copy_tree(
            &version.fixture.join("archive/basebackups_005"),
            &site.archive().join("basebackups_005"),
        );
        std::fs::create_dir_all(site.archive().join("wal_005")).unwrap();
        for name in site.wal_objects() {
            if keep(&name) {
                site.add_wal(&name);
            }
        }
        std::fs::create_dir_all(site.sock()).unwrap();
        give_to_postgres(&site.sock());
        site
    }

    /// Every WAL object of the fixture, without `.lzo`.
    fn wal_objects(&self) -> Vec<String> {
        wal_names_in(&self.version.fixture.join("archive"))
    }

    pub(crate) fn add_wal(&self, name: &str) {
        let file = format!("{name}.lzo");
        std::fs::copy(
            self.version.fixture.join("archive/wal_005").join(&file),
            self.archive().join("wal_005").join(&file),
        )
        .unwrap();
    }

    pub(crate) fn archive(&self) -> PathBuf {
        self.archive_root.clone()
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pgdata(&self) -> PathBuf {
        self.work.path().join("data/main")
    }

    pub(crate) fn sock(&self) -> PathBuf {
        self.work.path().join("sock")
    }

    pub(crate) fn wale(&self) -> std::process::Command {
        let mut cmd = wale();
        cmd.envs(self.archive_env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `wale restore` with this major's binaries named by `--pg-bin` (the only command
    /// that is told where they are).
    pub(crate) fn restore(&self, args: &[&str]) -> Run {
        Run::of(self.restore_command(args))
    }

    /// The `wale restore` command [`Site::restore`] runs, to spawn it.
    pub(crate) fn restore_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.wale();
        cmd.arg("restore").arg(self.pgdata()).args(args);
        cmd.arg("--pg-bin").arg(&self.version.bin);
        cmd.args(["--port", &self.port.to_string(), "--set"])
            .arg(format!("unix_socket_directories={}", self.sock().display()));
        cmd
    }

    /// Whatever `restore` writes beside the data directory.
    pub(crate) fn beside(&self) -> Vec<PathBuf> {
        let pgdata = self.pgdata().display().to_string();
        vec![
            PathBuf::from(format!("{pgdata}.wale-env")),
            PathBuf::from(format!("{pgdata}_tablespaces")),
        ]
    }

    /// `wale status --json`: no prefix, no `--pg-bin`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let mut cmd = wale();
        cmd.arg("status").arg(self.pgdata()).arg("--json");
        status_json(cmd)
    }

    /// `wale promote`: no prefix, no `--pg-bin`.
    pub(crate) fn promote(&self) -> Run {
        let mut cmd = wale();
        cmd.arg("promote").arg(self.pgdata());
        Run::of(cmd)
    }

    /// One query through Debian's psql (older or newer than the server: plain queries
    /// work across majors).
    pub(crate) fn query(&self, sql: &str) -> String {
        let mut cmd = as_postgres(Path::new("/usr/lib/postgresql/15/bin/psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-h"]).arg(self.sock());
        cmd.args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]);
        run_ok(cmd, "psql").trim().to_string()
    }

    pub(crate) fn counted(&self) -> String {
        self.query(&self.version.meta("EXPECTED_QUERY"))
    }

    pub(crate) fn wait_for_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "PostgreSQL {}: {what} not reached in 120 s; status {status:#}\nlog:\n{}",
                self.version.major,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.pgdata().join("log/postgresql.log")).unwrap_or_default()
    }
}

impl Drop for Site<'_> {
    fn drop(&mut self) {
        if self.pgdata().join("postmaster.pid").exists() {
            let mut stop = as_postgres(&self.version.bin.join("pg_ctl"));
            stop.arg("-D")
                .arg(self.pgdata())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        }
    }
}

/// How this major asks for recovery: `recovery.conf` up to 11, signal files after.
fn assert_recovery_files(site: &Site, standby: bool) {
    let pgdata = site.pgdata();
    let major = site.version.major;
    if major <= 11 {
        let conf = std::fs::read_to_string(pgdata.join("recovery.conf")).unwrap();
        assert!(conf.contains("restore_command = "), "{conf}");
        assert_eq!(conf.contains("standby_mode = 'on'"), standby, "{conf}");
        for signal in ["standby.signal", "recovery.signal"] {
            assert!(!pgdata.join(signal).exists(), "{major}: {signal}");
        }
    } else {
        let signal = if standby {
            "standby.signal"
        } else {
            "recovery.signal"
        };
        assert!(pgdata.join(signal).is_file(), "{major}: {signal}");
        assert!(!pgdata.join("recovery.conf").exists());
    }
    let conf = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
    let segment_mb: u64 = site.version.meta("SEGMENT_SIZE_MB").parse().unwrap();
    let min_wal = 80.max(2 * segment_mb);
    assert!(
        conf.contains(&format!("min_wal_size = '{min_wal}MB'")),
        "{major}: {conf}"
    );
    assert!(
        conf.contains(&format!(
            "max_connections = {}",
            site.version.meta("MAX_CONNECTIONS")
        )),
        "{major}: {conf}"
    );
    assert_eq!(conf.contains("max_wal_senders"), major >= 12, "{conf}");
}

/// A hot standby from the archive as it stood at the restore point, caught up, then
/// following the rest of the archive, then promoted.
fn standby_follows_the_archive_and_is_promoted(major: u32) {
    let version = Version::of(major);
    let later = version.words("SEGMENTS_AFTER_RESTORE_POINT");
    let site = Site::new(&version, |name| !later.iter().any(|l| l == name));
    site.restore(&["LATEST", "--standby", "--start"])
        .expect_code(0);
    assert_recovery_files(&site, true);

    let first_end = version.meta("RESTORE_POINT_WAL_SEGMENT");
    let status = site.wait_for_status("caught up with the first part", |s| s["caught_up"] == true);
    assert_eq!(status["standby"], true, "{status:#}");
    assert_eq!(status["timeline"], 1, "{status:#}");
    assert_eq!(status["replay_segment"], first_end.as_str(), "{status:#}");
    assert_eq!(status["archive_last_segment"], first_end.as_str());
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_RESTORE_POINT"));

    for name in &later {
        site.add_wal(name);
    }
    let last = version.meta("LAST_WAL_SEGMENT");
    site.wait_for_status("caught up with the grown archive", |s| {
        s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
    });
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"));
    let log = site.log();
    assert!(
        log.contains("started streaming WAL from primary"),
        "the standby never streamed from wale's WAL stream: {log}"
    );

    let run = site.promote().expect_code(0);
    assert!(run.stderr.contains("accepts writes"), "{}", run.stderr);
    assert_eq!(site.query("select pg_is_in_recovery()"), "f");
    site.query("insert into matrix_check values (100000, 99, 'after cutover')");
    if major <= 11 {
        assert!(site.pgdata().join("recovery.done").is_file());
    }
    let promoted = site.status();
    assert_eq!(promoted["in_recovery"], false);
    assert_eq!(status_code_for(&promoted), 7, "{promoted:#}");
}

/// Segments the prefetcher has ready reach PostgreSQL through `pg_wal`: with the
/// prefetch area filled before the server starts, recovery to the end of the archive
/// (or a standby, to its end) replays every segment after the backup's first from there
/// (no "restored log file" line names one), ends at the archive's end, is promoted (or
/// caught up) and holds the last rows.
fn prefetched_segments_are_handed_over_through_pg_wal(major: u32, standby: bool) {
    let version = Version::of(major);
    let site = Site::new(&version, |_| true);
    let mode: &[&str] = if standby {
        &["--standby", "--no-wal-stream"]
    } else {
        &["--no-wal-stream"]
    };
    site.restore(mode).expect_code(0);
    let first = version.meta("BACKUP_START_WAL_SEGMENT");
    let after_first: Vec<String> = version
        .words("WAL_SEGMENTS")
        .into_iter()
        .filter(|name| *name > first)
        .collect();
    // The backup's first segment fetched as PostgreSQL would: the prefetcher it starts
    // learns the segment size and fills the area; it exits 10 s after the last request.
    let mut fetch = as_postgres(Path::new("/usr/bin/env"));
    fetch
        .args(site.archive_env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg("WALE_PREFETCH_IDLE_SECONDS=10")
        .arg(env!("CARGO_BIN_EXE_wale"))
        .args([
            "wal-fetch",
            &first,
            "pg_wal/RECOVERYXLOG",
            "--prefetch",
            "16",
        ])
        .current_dir(site.pgdata());
    run_ok(fetch, "wal-fetch");
    std::fs::remove_file(site.pgdata().join("pg_wal/RECOVERYXLOG")).unwrap();
    let area = site.pgdata().join("pg_wal/.wal-e/prefetch");
    let started = Instant::now();
    while !after_first.iter().all(|name| area.join(name).is_file()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not prefetched in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    site.restore(&[mode, &["--start"]].concat()).expect_code(0);
    if standby {
        let last = version.meta("LAST_WAL_SEGMENT");
        site.wait_for_status("caught up", |s| {
            s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
        });
    } else {
        assert_eq!(site.query("select pg_is_in_recovery()"), "f");
    }
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"));
    // At the end of recovery PostgreSQL reads the last segment once more, to start its
    // new timeline: only what it read to replay counts.
    let log = site.log();
    let replay = match log.find("redo done") {
        Some(end) if !standby => &log[..end],
        _ => &log[..],
    };
    for name in &after_first {
        assert!(
            !replay.contains(&format!("restored log file \"{name}\"")),
            "PostgreSQL {major}: {name} was restored, not handed over:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("restored log file \"{first}\"")),
        "{log}"
    );
}

/// A point-in-time restore to the named restore point: it pauses there, `status` says so
/// on the right timeline with the archive's end, and `promote` ends recovery there.
fn point_in_time_restore_pauses_at_its_target_and_is_promoted(major: u32) {
    let version = Version::of(major);
    let site = Site::new(&version, |_| true);
    let name = version.meta("RESTORE_POINT_NAME");
    site.restore(&["--target-name", &name, "--start"])
        .expect_code(0);
    assert_recovery_files(&site, false);

    let status = site.wait_for_status("paused at the target", |s| s["paused_at_target"] == true);
    assert_eq!(status_code_for(&status), 4, "{status:#}");
    let mut metrics = wale();
    metrics
        .arg("status")
        .arg(site.pgdata())
        .args(["--format", "prometheus"]);
    let metrics = Run::of(metrics).expect_code(4).stdout_text();
    let label = format!("{{pgdata=\"{}\"}}", site.pgdata().display());
    for sample in [
        "wale_paused_at_target",
        "wale_in_recovery",
        "wale_server_running",
    ] {
        assert!(
            metrics.contains(&format!("\n{sample}{label} 1\n")),
            "{sample}:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(&format!("\nwale_caught_up{label} 0\n")),
        "{metrics}"
    );
    assert_eq!(status["standby"], false, "{status:#}");
    assert_eq!(status["caught_up"], false, "{status:#}");
    assert_eq!(status["timeline"], 1, "{status:#}");
    assert_eq!(
        status["archive_last_segment"],
        version.meta("LAST_WAL_SEGMENT").as_str(),
        "{status:#}"
    );
    assert!(
        status["recovery_target"]
            .as_str()
            .is_some_and(|t| t.contains(&name)),
        "{status:#}"
    );
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("paused at the recovery target")),
        "{status:#}"
    );
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_RESTORE_POINT"));

    let run = site.promote().expect_code(0);
    assert!(run.stderr.contains("recovery target"), "{}", run.stderr);
    assert_eq!(site.query("select pg_is_in_recovery()"), "f");
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_RESTORE_POINT"));
    site.query("insert into matrix_check values (100000, 99, 'after cutover')");
}

macro_rules! matrix {
    ($($name:ident: $major:expr,)*) => {
        $(
            mod $name {
                #[test]
                fn a_standby_follows_the_archive_and_is_promoted() {
                    super::standby_follows_the_archive_and_is_promoted($major);
                }

                #[test]
                fn prefetched_segments_are_handed_over_through_pg_wal() {
                    super::prefetched_segments_are_handed_over_through_pg_wal($major, false);
                }

                #[test]
                fn a_standby_takes_prefetched_segments_through_pg_wal() {
                    super::prefetched_segments_are_handed_over_through_pg_wal($major, true);
                }

                #[test]
                fn a_point_in_time_restore_pauses_at_its_target_and_is_promoted() {
                    super::point_in_time_restore_pauses_at_its_target_and_is_promoted($major);
                }
            }
        )*
    };
}

matrix! {
    pg10: 10,
    pg11: 11,
    pg12: 12,
    pg13: 13,
    pg14: 14,
    pg15: 15,
    pg16: 16,
    pg17: 17,
    pg18: 18,
}

/// `--target-time` with no backup name picks the backup by the stop time PostgreSQL
/// recorded, not by when the sentinel object was written (a copied archive changes that).
#[test]
fn target_time_compares_the_backups_recorded_stop_time() {
    let version = Version::of(11);
    let site = Site::new(&version, |_| true);
    let sentinel = site.archive().join(format!(
        "basebackups_005/{}_backup_stop_sentinel.json",
        version.meta("BACKUP_NAME")
    ));
    // As after a re-upload: the sentinel looks a day newer than the backup.
    set_mtime(
        &sentinel,
        std::time::SystemTime::now() + Duration::from_secs(86_400),
    );
    let stop = version.meta("BACKUP_STOP_TIME");
    let before = site
        .restore(&["--target-time", "2000-01-01 00:00:00+00"])
        .expect_code(1);
    assert!(before.stderr.contains("STOP TIME"), "{}", before.stderr);
    assert!(!site.pgdata().exists(), "nothing written for a refusal");

    let stopped = wale::time::parse_timestamp(&stop).expect("a STOP TIME wale reads");
    let secs = stopped
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 5;
    let mut date = std::process::Command::new("date");
    date.args(["-u", "-d", &format!("@{secs}"), "+%F %T+00"]);
    let after = run_ok(date, "date").trim().to_string();
    let run = site.restore(&["--target-time", &after]).expect_code(0);
    assert!(
        run.stderr.contains(&version.meta("BACKUP_NAME")) && run.stderr.contains("STOP TIME"),
        "{}",
        run.stderr
    );
}

/// `verify --wal-only` reads the segment size from the WAL (64 MiB here: no false gaps
/// after `…3F`), and checks a prefix holding WAL but no complete backup.
#[test]
fn verify_wal_only_learns_the_segment_size_and_needs_no_backup() {
    let version = Version::of(17);
    let site = Site::new(&version, |_| true);
    let mut cmd = site.wale();
    cmd.args(["verify", "--wal-only", "--json"]);
    let run = Run::of(cmd).expect_code(0);
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let timeline = &report["timelines"][0];
    assert_eq!(
        timeline["gaps"].as_array().map(Vec::len),
        Some(0),
        "{report:#}"
    );
    assert_eq!(
        timeline["last_segment"],
        version.meta("LAST_WAL_SEGMENT").as_str()
    );

    std::fs::remove_dir_all(site.archive().join("basebackups_005")).unwrap();
    let mut cmd = site.wale();
    cmd.args(["verify", "--wal-only", "--json"]);
    let run = Run::of(cmd).expect_code(0);
    assert!(run.stderr.contains("oldest segment"), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["restorable_to_end"], true, "{report:#}");
}

/// Preflight refuses what would fail later, before writing anything: an archive the
/// server's owner cannot read, a port in use, Debian's own cluster in the way.
#[test]
fn preflight_refuses_what_would_fail_later() {
    let version = Version::of(13);
    let site = Site::new(&version, |_| true);
    if users_is_root() {
        std::fs::set_permissions(site.archive(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let run = site.restore(&["--standby", "--start"]).expect_code(2);
        assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
        assert!(!site.pgdata().exists());
        std::fs::set_permissions(site.archive(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let listener = std::net::TcpListener::bind(("127.0.0.1", site.port)).unwrap();
    let started = Instant::now();
    let run = site.restore(&["--standby", "--start"]).expect_code(2);
    assert!(run.stderr.contains("is in use"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!site.pgdata().exists());
    drop(listener);

    let debian_main = Path::new("/var/lib/postgresql/15/main");
    if Path::new("/etc/postgresql/15/main/postgresql.conf").is_file() && debian_main.is_dir() {
        let mut cmd = site.wale();
        cmd.arg("restore").arg(debian_main);
        cmd.arg("--pg-bin").arg(&version.bin);
        let run = Run::of(cmd).expect_code(2);
        assert!(
            run.stderr.contains("Debian's cluster 15/main")
                && run.stderr.contains("pg_dropcluster --stop 15 main"),
            "{}",
            run.stderr
        );
    }
}

fn users_is_root() -> bool {
    wale::users::effective_uid() == 0
}
