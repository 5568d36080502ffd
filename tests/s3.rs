use crate::common::*;

fn fetch_cmd(
    archive: &Archive,
    server: &S3Server,
    name: &str,
    dest: &std::path::Path,
) -> std::process::Command {
    let mut cmd = wale_for(archive, Backend::S3, Some(server));
    cmd.arg("wal-fetch").arg(name).arg(dest);
    cmd
}

#[test]
fn wal_fetch_makes_one_get_and_no_listing() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    Run::of(fetch_cmd(&archive, &server, &name, &out.path().join("x"))).expect_code(0);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with(&format!("GET /{BUCKET}/db1/wal_005/{name}.lzo")),
        "{requests:?}"
    );
}

#[test]
fn wrong_credentials_and_missing_buckets_are_never_not_found() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let mut cmd = fetch_cmd(&archive, &server, &name, &out.path().join("x"));
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let run = Run::of(cmd).expect_code(201);
    assert!(
        run.stderr.contains("access denied") || run.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("not-the-secret"),
        "the secret was printed"
    );
    // s3s-fs answers NoSuchKey for a missing bucket, so real S3's answer is injected.
    server.inject(&name, Fault::Status(404, "NoSuchBucket"));
    let cmd = fetch_cmd(&archive, &server, &name, &out.path().join("x"));
    let run = Run::of(cmd).expect_code(201);
    assert!(run.stderr.contains("NoSuchBucket"), "{}", run.stderr);
}

#[test]
fn transient_errors_and_truncated_bodies_are_retried() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    server.inject(&name, Fault::Status(503, "SlowDown"));
    server.inject(&name, Fault::Status(500, "InternalError"));
    server.inject(&name, Fault::Truncate(10_000));
    let dest = out.path().join("RECOVERYXLOG");
    let run = Run::of(fetch_cmd(&archive, &server, &name, &dest)).expect_code(0);
    assert_eq!(
        run.stderr.matches("retrying in").count(),
        3,
        "{}",
        run.stderr
    );
    assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(&name)));
}

#[test]
fn persistent_failures_exit_above_125_after_wale_retries() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    for _ in 0..3 {
        server.inject(&name, Fault::Status(503, "SlowDown"));
    }
    let dest = out.path().join("RECOVERYXLOG");
    let mut cmd = fetch_cmd(&archive, &server, &name, &dest);
    cmd.env("WALE_RETRIES", "3");
    let run = Run::of(cmd).expect_code(200);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(!dest.exists());
    // The attempts stop at WALE_RETRIES: exactly three GETs reached the server.
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET "))
        .count();
    assert_eq!(gets, 3);
}

#[test]
fn envdir_configures_s3_like_daemontools_envdir() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let envdir = tempfile::tempdir().unwrap();
    for (k, v) in server.env(&archive) {
        std::fs::write(envdir.path().join(k), format!("{v}\n")).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let mut cmd = wale();
    cmd.arg("--envdir")
        .arg(envdir.path())
        .arg("wal-fetch")
        .arg(&name)
        .arg(out.path().join("x"));
    Run::of(cmd).expect_code(0);
    let mut cmd = wale();
    cmd.arg("--envdir")
        .arg(envdir.path().join("missing"))
        .arg("backup-list");
    let run = Run::of(cmd).expect_code(2);
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
}
