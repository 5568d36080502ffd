use crate::common::*;

fn fetch_cmd(
    archive: &Archive,
    server: &S3Server,
    name: &str,
    dest: &std::path::Path,
) -> std::process::Command {
    let mut cmd = wale_for(archive, Backend::S3, Some(server));
    cmd.args(["wal-fetch", "--prefetch", "0"])
        .arg(name)
        .arg(dest);
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
    let mut cmd = fetch_cmd(&archive, &server, &name, &dest);
    cmd.arg("-v");
    let run = Run::of(cmd).expect_code(0);
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

/// A stand-in for the EC2 instance-metadata service (IMDSv2) on 127.0.0.1, handing out the
/// test server's keys as instance-profile credentials and counting requests.
struct FakeImds {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeImds {
    fn start() -> FakeImds {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok() && line != "\r\n" && !line.is_empty() {
                    line.clear();
                }
                let target = request_line
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                seen.lock().unwrap().push(target.clone());
                let body = match target.as_str() {
                    "PUT /latest/api/token" => "fake-imds-token".to_string(),
                    "GET /latest/meta-data/iam/security-credentials/" => "wale-role".to_string(),
                    "GET /latest/meta-data/iam/security-credentials/wale-role" => format!(
                        "{{\"Code\": \"Success\", \"Type\": \"AWS-HMAC\", \"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\", \"Token\": \"session-token\", \"Expiration\": \"2099-01-01T00:00:00Z\"}}"
                    ),
                    _ => String::new(),
                };
                let status = if body.is_empty() {
                    "404 Not Found"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeImds { addr, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn instance_metadata_is_used_only_when_an_instance_profile_is_asked_for() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let imds = FakeImds::start();
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    // Static keys: the metadata service is never contacted.
    let mut cmd = fetch_cmd(&archive, &server, &name, &out.path().join("a"));
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint());
    Run::of(cmd).expect_code(0);
    assert!(imds.requests().is_empty(), "{:?}", imds.requests());
    // Instance profile, no keys at all: credentials come from the metadata service.
    let mut cmd = fetch_cmd(&archive, &server, &name, &out.path().join("b"));
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint());
    cmd.env("AWS_INSTANCE_PROFILE", "true");
    Run::of(cmd).expect_code(0);
    let requests = imds.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.ends_with("security-credentials/wale-role")),
        "{requests:?}"
    );
    assert!(
        std::fs::read(out.path().join("b")).unwrap() == lzop_decompress(&archive.wal_object(&name))
    );
}

#[test]
fn virtualhost_convention_uses_the_bucket_as_the_host_name() {
    // Bucket "localhost" resolves to this machine, so WAL-E's CNAME-style convention can
    // be exercised: the endpoint's host is not used, its scheme and port are.
    let archive = Archive::fixture_copy_in("localhost");
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let mut cmd = fetch_cmd(&archive, &server, &name, &out.path().join("x"));
    cmd.env(
        "WALE_S3_ENDPOINT",
        format!("http+virtualhost://127.0.0.1:{}", server.addr.port()),
    );
    Run::of(cmd).expect_code(0);
    assert!(
        std::fs::read(out.path().join("x")).unwrap() == lzop_decompress(&archive.wal_object(&name))
    );
    let requests = server.requests();
    assert!(
        requests[0].starts_with(&format!("GET /db1/wal_005/{name}.lzo")),
        "{requests:?}"
    );
}

#[test]
fn secrets_never_reach_the_logs_at_any_verbosity() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let token = "SeSsIoNtOkEnVaLuE";
    for (level, secret) in [
        ("info", SECRET_KEY),
        ("debug", SECRET_KEY),
        ("trace", SECRET_KEY),
        ("trace", "wrong-sEcReT"),
    ] {
        let mut cmd = fetch_cmd(&archive, &server, &name, &out.path().join("x"));
        cmd.env("RUST_LOG", level)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", token);
        let run = Run::of(cmd);
        for text in [&run.stderr, &run.stdout_text()] {
            for value in [secret, token, ACCESS_KEY] {
                assert!(
                    !text.contains(value),
                    "{value} appeared at {level} level:\n{text}"
                );
            }
        }
    }
}

/// An endpoint where nothing listens: interactive commands give up within seconds with
/// one short line (no SDK `Debug` dump); `wal-fetch` keeps retrying under its policy.
#[test]
fn an_endpoint_that_refuses_connections_is_reported_briefly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let base = |cmd: &mut std::process::Command| {
        cmd.env("WALE_S3_PREFIX", "s3://bucket/prefix")
            .env("WALE_S3_ENDPOINT", format!("http+path://127.0.0.1:{port}"))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s");
    };
    let mut list = wale();
    base(&mut list);
    list.arg("backup-list");
    let started = std::time::Instant::now();
    let run = Run::of(list).expect_code(200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "backup-list waited {:?} for a closed port",
        started.elapsed()
    );
    // One line per failure: the attempts are debug lines, shown with -v.
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let mut verbose = wale();
    base(&mut verbose);
    verbose.args(["-v", "backup-list"]);
    let chatty = Run::of(verbose).expect_code(200);
    assert!(
        chatty.stderr.contains("attempt 1 of 100 failed")
            && chatty.stderr.contains("giving up after"),
        "{}",
        chatty.stderr
    );
    let error = run.error_lines();
    assert_eq!(error.len(), 1, "{}", run.stderr);
    assert!(
        error[0].contains("s3://bucket/prefix/basebackups_005/")
            && error[0].contains("Connection refused"),
        "{}",
        error[0]
    );
    for line in run.stderr.lines() {
        assert!(
            line.len() < 200 && !line.contains("DispatchFailure"),
            "not a short human line: {line}"
        );
    }

    // wal-fetch is not interactive: it uses every attempt WALE_RETRIES gives it.
    let out = tempfile::tempdir().unwrap();
    let mut fetch = wale();
    base(&mut fetch);
    fetch
        .env("WALE_RETRIES", "4")
        .args(["--verbose", "wal-fetch", "--prefetch", "0"])
        .arg("000000010000000000000003")
        .arg(out.path().join("RECOVERYXLOG"));
    let run = Run::of(fetch).expect_code(200);
    assert!(!run.stderr.contains("giving up"), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("retrying in").count(),
        3,
        "{}",
        run.stderr
    );
}
