//! OpenStack Swift: the project's real WAL-E archive served by a real Swift 2.38 (from
//! PyPI, tempauth) under WAL-E's own object names (`/path/wal_005/…`), read through every
//! command, down to a PostgreSQL recovery and a hot standby made by `wale restore`.
//! Keystone (auth v2/v3) does not run here: its token and catalog parsing is unit-tested
//! against recorded answers (`src/storage/swift/keystone.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wale::config::{Config, Env, GlobalFlags};
use wale::storage::{Storage, Store};

use crate::common::pg::*;
use crate::common::swift::*;
use crate::common::*;
use crate::postgres::{restore_and_start, work_dir};
use crate::storage_contract::{check_contract, check_paging};

const CONTAINER: &str = "wale-archive";
const PREFIX: &str = "heroku/db-1";

/// A Swift holding the fixture archive under `CONTAINER/PREFIX`, and the settings that
/// reach it.
fn serve() -> (SwiftServer, Vec<(String, String)>) {
    let swift = SwiftServer::start();
    swift.create_container(CONTAINER);
    swift.upload_tree(CONTAINER, &fixture().join("archive"), PREFIX);
    let settings = swift.env(CONTAINER, PREFIX);
    (swift, settings)
}

fn wale_with(settings: &[(String, String)]) -> Command {
    let mut cmd = wale();
    cmd.envs(settings.iter().cloned());
    cmd
}

fn wal_fetch(settings: &[(String, String)], name: &str, dest: &Path) -> Run {
    let mut cmd = wale_with(settings);
    cmd.args(["wal-fetch", "--prefetch", "0", name]).arg(dest);
    Run::of(cmd)
}

fn with(settings: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut changed: Vec<_> = settings
        .iter()
        .filter(|(n, _)| n != name)
        .cloned()
        .collect();
    changed.push((name.to_string(), value.to_string()));
    changed
}

async fn open(settings: &[(String, String)]) -> Store {
    let config =
        Config::resolve(&GlobalFlags::default(), &Env::from_pairs(settings.to_vec())).unwrap();
    assert_eq!(config.store.path_prefix(), format!("{PREFIX}/"));
    Store::open(&config.store).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_contract_holds_on_swift() {
    let (swift, settings) = serve();
    let store = open(&settings).await;
    let prefix = format!("{PREFIX}/");
    check_contract(&store, &prefix, &fixture().join("archive"), "Swift").await;
    let mut names: Vec<String> = fixture_wal_names()
        .into_iter()
        .map(|n| format!("{n}.lzo"))
        .collect();
    names.sort();
    check_paging(&store, &prefix, &names, "Swift").await;
    // On the wire, WAL-E's names: the container, then `/` + the logical key.
    let log = swift.log("object");
    assert!(
        log.contains(&format!("{CONTAINER}//{PREFIX}/wal_005/")),
        "{log}"
    );
}

#[test]
fn every_command_reads_the_archive_on_swift() {
    let (_swift, settings) = serve();
    let work = tempfile::tempdir().unwrap();
    let backup = fixture_meta("BACKUP_NAME");

    // backup-list: every complete backup, with the time as Swift's listing gives it.
    let mut list = wale_with(&settings);
    list.arg("backup-list");
    let listed = Run::of(list).expect_code(0).stdout_text();
    let expected_names: Vec<String> = std::fs::read_to_string(fixture().join("backup-list.txt"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    let listed_names: Vec<&str> = listed
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(listed_names, expected_names, "{listed}");
    let row = listed.lines().find(|l| l.starts_with(&backup)).unwrap();
    let time = row.split('\t').nth(1).unwrap();
    assert!(
        time.len() == 26 && time.as_bytes()[10] == b'T' && time.as_bytes()[19] == b'.',
        "{row}"
    );
    let mut latest = wale_with(&settings);
    latest.args(["backup-list", "LATEST", "--detail", "--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&Run::of(latest).expect_code(0).stdout).unwrap();
    let text = json.to_string();
    assert!(text.contains(&fixture_meta("LATEST")), "{text}");

    // wal-fetch: every object, byte for byte what lzop makes of WAL-E's object.
    for name in fixture_wal_names() {
        let dest = work.path().join(&name);
        wal_fetch(&settings, &name, &dest).expect_code(0);
        let want = lzop_decompress(&fixture().join(format!("archive/wal_005/{name}.lzo")));
        assert!(std::fs::read(&dest).unwrap() == want, "{name}");
    }
    let missing = wal_fetch(
        &settings,
        "0000000100000000000000FE",
        &work.path().join("x"),
    )
    .expect_code(1);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    // backup-fetch: WAL-E's tree, partitions in parallel.
    let target = work.path().join("pgdata");
    let mut fetch = wale_with(&settings);
    fetch
        .arg("backup-fetch")
        .arg(&target)
        .args(["LATEST", "--blind-restore"]);
    Run::of(fetch).expect_code(0);
    assert_same_tree(&manifest(&target), &wal_e_restore_manifest(), "Swift");

    // verify: the backup read through and the WAL after it, all there.
    let mut verify = wale_with(&settings);
    verify.arg("verify");
    let verified = Run::of(verify).expect_code(0);
    assert!(
        verified.stdout_text().contains(&backup),
        "{}",
        verified.stdout_text()
    );
}

#[test]
fn postgres_recovers_from_swift_through_the_prefetcher() {
    let (_swift, settings) = serve();
    let work = work_dir();
    let recovery = restore_and_start(
        work.path(),
        "pgdata",
        &settings,
        free_port(),
        "archive_mode = off\n",
    );
    let actual = recovery.psql(&["-f", fixture().join("checks.sql").to_str().unwrap()]);
    let expected = std::fs::read_to_string(fixture().join("expected.txt")).unwrap();
    assert_eq!(actual, expected, "log:\n{}", recovery.log_text());
    let log = recovery.log_text();
    let end = fixture_meta("END_WAL_SEGMENT");
    assert!(
        log.contains(&format!("restored log file \"{end}\" from archive")),
        "{log}"
    );
    assert!(
        log.contains("from the prefetch area"),
        "no prefetch hit: {log}"
    );
}

/// `wale restore … --standby --start` from a `swift://` prefix: a running hot standby,
/// `status` (through the envdir restore wrote, which carries the Swift settings outside
/// PGDATA) until caught up, the recorded query results, then `promote`.
#[test]
fn wale_restore_makes_a_running_standby_from_swift() {
    let (_swift, settings) = serve();
    let work = work_dir();
    let pgdata = work.path().join("srv/main");
    let sock = work.path().join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    give_to_postgres(&sock);
    let port = free_port();
    let mut restore = wale_with(&settings);
    restore
        .arg("restore")
        .arg(&pgdata)
        .args([
            "LATEST",
            "--standby",
            "--start",
            "--port",
            &port.to_string(),
        ])
        .arg("--set")
        .arg(format!("unix_socket_directories={}", sock.display()));
    let _stop = StopOnDrop(pgdata.clone());
    Run::of(restore).expect_code(0);

    let envdir = PathBuf::from(format!("{}.wale-env", pgdata.display()));
    for name in [
        "WALE_SWIFT_PREFIX",
        "SWIFT_AUTHURL",
        "SWIFT_USER",
        "SWIFT_PASSWORD",
    ] {
        assert!(envdir.join(name).is_file(), "{name} not in the envdir");
    }
    let in_pgdata = Command::new("grep")
        .args(["-r", "-l", SWIFT_KEY])
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        in_pgdata.stdout.is_empty(),
        "the password is inside PGDATA: {}",
        String::from_utf8_lossy(&in_pgdata.stdout)
    );

    let status = wait_until_caught_up(&pgdata, Duration::from_secs(120));
    assert_eq!(status["standby"], true, "{status:#}");
    assert_eq!(
        status["archive_last_segment"],
        fixture_meta("END_WAL_SEGMENT").as_str()
    );
    let checks = work.path().join("checks.sql");
    std::fs::copy(fixture().join("checks.sql"), &checks).unwrap();
    give_to_postgres(&checks);
    let mut psql = as_postgres(&pg_bin().join("psql"));
    psql.args(["-X", "-q", "-h"]).arg(&sock);
    psql.args(["-p", &port.to_string(), "-d", "postgres", "-f"])
        .arg(&checks);
    let expected = std::fs::read_to_string(fixture().join("expected.txt")).unwrap();
    assert_eq!(run_ok(psql, "psql"), expected);

    let mut promote = wale();
    promote.arg("promote").arg(&pgdata);
    let run = Run::of(promote).expect_code(0);
    assert!(run.stderr.contains("accepts writes"), "{}", run.stderr);
}

/// Stops a server `wale restore` started, whatever the test's outcome.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.0.join("postmaster.pid").exists() {
            let mut stop = as_postgres(&pg_bin().join("pg_ctl"));
            stop.arg("-D")
                .arg(&self.0)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        }
    }
}

fn wait_until_caught_up(pgdata: &Path, limit: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let mut cmd = wale();
        cmd.arg("status").arg(pgdata).arg("--json");
        let status = status_json(cmd);
        if status["caught_up"] == true {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "not caught up in {limit:?}: {status:#}\n{}",
            std::fs::read_to_string(pgdata.join("log/postgresql.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn refusals_a_missing_container_and_a_vanished_server_are_told_apart_on_swift() {
    let (mut swift, settings) = serve();
    let name = fixture_meta("END_WAL_SEGMENT");
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("seg");

    // A wrong password is refused (201), never "not found", and never printed.
    let wrong = with(&settings, "SWIFT_PASSWORD", "not-the-key");
    let run = wal_fetch(&wrong, &name, &dest).expect_code(201);
    assert!(
        run.stderr.contains("cannot authenticate") && run.stderr.contains("401"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-the-key"), "{}", run.stderr);
    assert!(!dest.exists());
    let mut list = wale_with(&wrong);
    list.arg("backup-list");
    Run::of(list).expect_code(201);

    // A container that does not exist is a configuration error, not "not found".
    let no_container = with(
        &settings,
        "WALE_SWIFT_PREFIX",
        &format!("swift://no-such-container/{PREFIX}"),
    );
    let run = wal_fetch(&no_container, &name, &dest).expect_code(201);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    let mut list = wale_with(&no_container);
    list.arg("backup-list");
    let run = Run::of(list).expect_code(201);
    assert!(run.stderr.contains("WALE_SWIFT_PREFIX"), "{}", run.stderr);

    // A server that went away: interactive commands give up soon, wal-fetch retries.
    swift.stop();
    let mut list = wale_with(&settings);
    list.arg("backup-list");
    let started = Instant::now();
    let run = Run::of(list).expect_code(200);
    assert!(started.elapsed().as_secs() < 30);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
    let retried = wal_fetch(&with(&settings, "WALE_RETRIES", "2"), &name, &dest).expect_code(200);
    assert!(
        retried.stderr.contains("cannot connect"),
        "{}",
        retried.stderr
    );
    assert!(!dest.exists());
}

/// A token Swift stops accepting (here: the proxy restarted with a new signing key, as
/// after a revocation) is renewed once, and the read goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_renewed_once() {
    let (mut swift, settings) = serve();
    let store = open(&settings).await;
    let key = format!("{PREFIX}/wal_005/{}.lzo", fixture_meta("END_WAL_SEGMENT"));
    let before = store.head(&key).await.unwrap();
    swift.revoke_tokens();
    let after = store.head(&key).await.unwrap();
    assert_eq!(before.size, after.size);
    assert_eq!(before.last_modified_text, after.last_modified_text);
    let log = swift.log("proxy");
    let refused = log
        .lines()
        .filter(|l| l.contains(" HEAD /v1/AUTH_test/") && l.contains("/wal_005/"))
        .filter(|l| l.contains(" 401 "))
        .count();
    let logins = log
        .lines()
        .filter(|l| l.contains(" GET /auth/v1.0 ") && l.contains(" 200 "))
        .count();
    assert_eq!(refused, 1, "{log}");
    // Two for the uploads' helper and the store's first token, one renewal.
    assert!(logins >= 2, "{log}");
    let store_logins = log
        .lines()
        .filter(|l| l.contains(" GET /auth/v1.0 ") && l.contains(" 200 ") && !l.contains("curl/"))
        .count();
    assert_eq!(store_logins, 2, "{log}");
}

/// A token whose announced life (`X-Auth-Token-Expires`) runs out is renewed before Swift
/// would refuse it: no request is ever sent with an expired token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_before_it_expires() {
    let swift = SwiftServer::start_with_token_life(3);
    swift.create_container(CONTAINER);
    let name = fixture_meta("END_WAL_SEGMENT");
    let key = format!("{PREFIX}/wal_005/{name}.lzo");
    swift.upload(
        CONTAINER,
        &key,
        &fixture().join(format!("archive/wal_005/{name}.lzo")),
    );
    let store = open(&swift.env(CONTAINER, PREFIX)).await;
    store.head(&key).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    store.head(&key).await.unwrap();
    let log = swift.log("proxy");
    let heads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" HEAD /v1/AUTH_test/") && l.contains("/wal_005/"))
        .collect();
    assert_eq!(heads.len(), 2, "{log}");
    assert!(heads.iter().all(|l| l.contains(" 200 ")), "{log}");
    let store_logins = log
        .lines()
        .filter(|l| l.contains(" GET /auth/v1.0 ") && l.contains(" 200 ") && !l.contains("curl/"))
        .count();
    assert_eq!(store_logins, 2, "{log}");
}
