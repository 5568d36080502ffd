//! Google Cloud Storage and Azure Blob Storage: the project's real WAL-E archive served by
//! gcp-storage-emulator and Azurite under WAL-E's own object names (a leading `/` on GCS),
//! read through every command, down to a PostgreSQL recovery.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use wale::config::{Config, Env, GlobalFlags};
use wale::storage::{Storage, Store};

use crate::common::cloud::*;
use crate::common::pg::*;
use crate::common::*;
use crate::postgres::{restore_and_start, work_dir};
use crate::storage_contract::{check_contract, check_paging};

const BUCKET: &str = "wale-archive";
const PREFIX: &str = "heroku/db-1";

/// An emulator holding the fixture archive under `BUCKET/PREFIX`, and the settings that
/// reach it.
fn serve(cloud: Cloud) -> (Emulator, Vec<(String, String)>) {
    let emulator = Emulator::start(cloud);
    emulator.create_bucket(BUCKET);
    emulator.upload_tree(BUCKET, &fixture().join("archive"), PREFIX);
    let settings = emulator.env(BUCKET, PREFIX);
    (emulator, settings)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_contract_holds_on_gcs_and_azure() {
    // Object names in key order (`….backup.lzo` sorts before `….lzo`).
    let mut names: Vec<String> = fixture_wal_names()
        .into_iter()
        .map(|n| format!("{n}.lzo"))
        .collect();
    names.sort();
    for cloud in CLOUDS {
        let (_emulator, settings) = serve(cloud);
        let config = Config::resolve(&GlobalFlags::default(), &Env::from_pairs(settings)).unwrap();
        let prefix = config.store.path_prefix().to_string();
        assert_eq!(prefix, format!("{PREFIX}/"));
        let store = Store::open(&config.store).await.unwrap();
        let label = format!("{cloud:?}");
        check_contract(&store, &prefix, &fixture().join("archive"), &label).await;
        check_paging(&store, &prefix, &names, &label).await;
    }
}

#[test]
fn every_command_reads_the_archive_on_gcs_and_azure() {
    for cloud in CLOUDS {
        let (_emulator, settings) = serve(cloud);
        let work = tempfile::tempdir().unwrap();

        // backup-list: the backup, with the time as WAL-E printed this cloud's times.
        let mut list = wale_with(&settings);
        list.arg("backup-list");
        let listed = Run::of(list).expect_code(0).stdout_text();
        let backup = fixture_meta("BACKUP_NAME");
        let row = listed
            .lines()
            .find(|l| l.starts_with(&backup))
            .unwrap_or_else(|| panic!("{cloud:?}: {listed}"));
        let time = row.split('\t').nth(1).unwrap();
        assert!(
            time.ends_with("+00:00") && time.as_bytes()[10] == b' ',
            "{cloud:?}: {row}"
        );

        // wal-fetch: every object, byte for byte what lzop makes of WAL-E's object.
        for name in fixture_wal_names() {
            let dest = work.path().join(&name);
            wal_fetch(&settings, &name, &dest).expect_code(0);
            let want = lzop_decompress(&fixture().join(format!("archive/wal_005/{name}.lzo")));
            assert!(std::fs::read(&dest).unwrap() == want, "{cloud:?}: {name}");
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
        assert_same_tree(
            &manifest(&target),
            &wal_e_restore_manifest(),
            &format!("{cloud:?}"),
        );

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
}

#[test]
fn postgres_recovers_from_gcs_and_azure() {
    for cloud in CLOUDS {
        let (_emulator, settings) = serve(cloud);
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
        assert_eq!(actual, expected, "{cloud:?}; log:\n{}", recovery.log_text());
        let log = recovery.log_text();
        let end = fixture_meta("END_WAL_SEGMENT");
        assert!(
            log.contains(&format!("restored log file \"{end}\" from archive")),
            "{cloud:?}: {log}"
        );
        assert!(
            log.contains("from the prefetch area"),
            "{cloud:?}: no prefetch hit: {log}"
        );
    }
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

#[test]
fn refusals_missing_containers_and_a_vanished_store_are_told_apart() {
    let name = fixture_meta("END_WAL_SEGMENT");
    for cloud in CLOUDS {
        let (mut emulator, settings) = serve(cloud);
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("seg");

        // A bucket or container that does not exist is a configuration error, not "not found".
        let (var, url) = match cloud {
            Cloud::Gcs => ("WALE_GS_PREFIX", format!("gs://no-such-bucket/{PREFIX}")),
            Cloud::Azure => (
                "WALE_WABS_PREFIX",
                format!("wabs://no-such-container/{PREFIX}"),
            ),
        };
        let mut list = wale_with(&with(&settings, var, &url));
        list.arg("backup-list");
        let run = Run::of(list).expect_code(201);
        assert!(
            run.stderr.contains("does not exist"),
            "{cloud:?}: {}",
            run.stderr
        );
        let run = wal_fetch(&with(&settings, var, &url), &name, &dest).expect_code(201);
        assert!(
            run.stderr.contains("does not exist"),
            "{cloud:?}: {}",
            run.stderr
        );
        if cloud == Cloud::Azure {
            // A wrong account key is refused, and the key is never printed.
            let wrong = "d3Jvbmcga2V5";
            let run = wal_fetch(&with(&settings, "WABS_ACCESS_KEY", wrong), &name, &dest)
                .expect_code(201);
            assert!(run.stderr.contains("access denied"), "{}", run.stderr);
            assert!(!run.stderr.contains(wrong) && !run.stderr.contains(AZURITE_KEY));
            assert!(!dest.exists());

            // A SAS token instead of the key.
            let sas: Vec<_> = settings
                .iter()
                .filter(|(n, _)| n != "WABS_ACCESS_KEY")
                .cloned()
                .chain([("WABS_SAS_TOKEN".to_string(), account_sas())])
                .collect();
            wal_fetch(&sas, &name, &dest).expect_code(0);
            let want = lzop_decompress(&fixture().join(format!("archive/wal_005/{name}.lzo")));
            assert!(std::fs::read(&dest).unwrap() == want);
            std::fs::remove_file(&dest).unwrap();
        }

        // A store that went away: interactive commands give up soon, wal-fetch retries.
        emulator.stop();
        let mut list = wale_with(&settings);
        list.arg("backup-list");
        let started = std::time::Instant::now();
        let run = Run::of(list).expect_code(200);
        assert!(started.elapsed().as_secs() < 30, "{cloud:?}");
        assert!(
            run.stderr.contains("cannot connect"),
            "{cloud:?}: {}",
            run.stderr
        );
        let retried =
            wal_fetch(&with(&settings, "WALE_RETRIES", "2"), &name, &dest).expect_code(200);
        assert!(
            retried.stderr.contains("cannot connect"),
            "{}",
            retried.stderr
        );
        assert!(!dest.exists());
    }
}

/// An account SAS for Azurite's account: read and list on blobs, signed with its key.
fn account_sas() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (version, permissions, expiry) = ("2020-10-02", "rl", "2099-01-01T00:00:00Z");
    let to_sign =
        format!("{AZURITE_ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &b64.decode(AZURITE_KEY).unwrap(),
    );
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let signature: String = signature
        .bytes()
        .map(|b| match b {
            b'+' => "%2B".to_string(),
            b'/' => "%2F".to_string(),
            b'=' => "%3D".to_string(),
            _ => (b as char).to_string(),
        })
        .collect();
    format!("sv={version}&ss=b&srt=sco&sp={permissions}&se={expiry}&spr=https,http&sig={signature}")
}

/// A stand-in on loopback for what no emulator here provides (Google's token endpoint,
/// the metadata server, a listing cut into pages): it records each request and answers
/// what `reply` says for its request line.
struct StubServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A stub answering every request with `status` and `body`.
struct TokenServer;

impl TokenServer {
    fn start(status: u16, body: &'static str) -> StubServer {
        StubServer::start(move |_| (status, body.to_string()))
    }
}

impl StubServer {
    fn start(reply: impl Fn(&str) -> (u16, String) + Send + 'static) -> StubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                let mut body_bytes = vec![0; length];
                reader.read_exact(&mut body_bytes).unwrap();
                seen.lock().unwrap().push(format!(
                    "{head}\r\n{}",
                    String::from_utf8_lossy(&body_bytes)
                ));
                let (status, body) = reply(head.lines().next().unwrap_or_default());
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        StubServer { port, requests }
    }
}

/// Google's listings come in pages joined by `nextPageToken` (the emulator sends one page,
/// whatever it is asked): every page is read, and a paged walk crosses page boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_listings_follow_page_tokens() {
    fn item(name: &str) -> serde_json::Value {
        serde_json::json!({"name": format!("/p/wal_005/{name}"), "size": "7", "updated": "2026-11-24T22:58:50.5Z"})
    }
    let server = StubServer::start(|line| {
        let page = if line.contains("pageToken=second") {
            serde_json::json!({"items": [item("C")]})
        } else {
            serde_json::json!({"items": [item("A"), item("B")], "nextPageToken": "second"})
        };
        (200, page.to_string())
    });
    let settings = [
        ("WALE_GS_PREFIX", "gs://b/p".to_string()),
        (
            "WALE_GS_ENDPOINT",
            format!("http://127.0.0.1:{}", server.port),
        ),
    ];
    let config = Config::resolve(&GlobalFlags::default(), &Env::from_pairs(settings)).unwrap();
    let store = Store::open(&config.store).await.unwrap();
    let keys = |objects: Vec<wale::storage::ObjectMeta>| -> Vec<String> {
        objects.into_iter().map(|o| o.key).collect()
    };
    let all = store.list("p/wal_005/", None).await.unwrap();
    assert_eq!(
        keys(all.objects),
        ["p/wal_005/A", "p/wal_005/B", "p/wal_005/C"]
    );
    let after_a = store
        .list_after("p/wal_005/", "p/wal_005/A", 10)
        .await
        .unwrap();
    assert_eq!(keys(after_a), ["p/wal_005/B", "p/wal_005/C"]);
    let first_two = store.list_after("p/wal_005/", "", 2).await.unwrap();
    assert_eq!(keys(first_two), ["p/wal_005/A", "p/wal_005/B"]);
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("startOffset=%2Fp%2Fwal_005%2FA")),
        "{requests:?}"
    );
    assert_eq!(requests.len(), 5, "{requests:?}");
}

#[test]
fn gcs_tokens_come_from_a_service_account_key_or_the_metadata_server() {
    let (_emulator, settings) = serve(Cloud::Gcs);
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("key.pem");
    run_ok(
        {
            let mut c = Command::new("openssl");
            c.args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key);
            c
        },
        "openssl genpkey",
    );
    let public = Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap()
        .stdout;
    let name = fixture_meta("END_WAL_SEGMENT");
    let dest = work.path().join("seg");
    let account_file = |token_uri: String| {
        let path = work.path().join("sa.json");
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": "wale@project.iam.gserviceaccount.com",
            "private_key": std::fs::read_to_string(&key).unwrap(),
            "token_uri": token_uri,
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path.display().to_string()
    };

    // A service account: a JWT signed with its key, exchanged for a token once.
    let server = TokenServer::start(200, r#"{"access_token":"ya29.test","expires_in":3600}"#);
    let file = account_file(format!("http://127.0.0.1:{}/token", server.port));
    let with_key = with(&settings, "GOOGLE_APPLICATION_CREDENTIALS", &file);
    wal_fetch(&with_key, &name, &dest).expect_code(0);
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let assertion = requests[0]
        .split("assertion=")
        .nth(1)
        .expect("a jwt-bearer grant")
        .trim();
    let (signed, signature) = assertion.rsplit_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &public,
    )
    .verify(signed.as_bytes(), &b64.decode(signature).unwrap())
    .expect("the JWT is signed with the service account's key");
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(signed.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["iss"], "wale@project.iam.gserviceaccount.com");
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/devstorage.read_only"
    );
    std::fs::remove_file(&dest).unwrap();

    // A refused grant is a refusal (201) that says why, and nothing is written.
    let refusing = TokenServer::start(
        400,
        r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
    );
    let file = account_file(format!("http://127.0.0.1:{}/token", refusing.port));
    let run = wal_fetch(
        &with(&settings, "GOOGLE_APPLICATION_CREDENTIALS", &file),
        &name,
        &dest,
    )
    .expect_code(201);
    assert!(
        run.stderr.contains("Invalid JWT Signature"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("PRIVATE KEY"));
    assert!(!dest.exists());

    // The metadata server, only when asked for.
    let metadata = TokenServer::start(
        200,
        r#"{"access_token":"ya29.vm","expires_in":3599,"token_type":"Bearer"}"#,
    );
    let mut on_gce = with(&settings, "WALE_GS_INSTANCE_METADATA", "true");
    on_gce.push((
        "GCE_METADATA_HOST".into(),
        format!("127.0.0.1:{}", metadata.port),
    ));
    wal_fetch(&on_gce, &name, &dest).expect_code(0);
    let asked = metadata.requests.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token")
            && asked[0]
                .to_ascii_lowercase()
                .contains("metadata-flavor: google"),
        "{}",
        asked[0]
    );
}
