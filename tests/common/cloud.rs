//! The cloud emulators on loopback, started per test: Google's storage API by
//! `gcp-storage-emulator` and Azure's Blob service by Azurite, both installed by
//! `scripts/test.sh` under `WALE_EMULATORS` (default `/var/tmp/wale-emulators`). An
//! archive is uploaded into them with exactly WAL-E's object names.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Azurite's well-known development account and key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Which emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Gcs,
    Azure,
}

pub const CLOUDS: [Cloud; 2] = [Cloud::Gcs, Cloud::Azure];

fn emulators_dir() -> PathBuf {
    std::env::var_os("WALE_EMULATORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-emulators"))
}

/// A running emulator, stopped when dropped.
pub struct Emulator {
    pub cloud: Cloud,
    pub port: u16,
    child: Option<Child>,
    _data: tempfile::TempDir,
}

impl Emulator {
    pub fn start(cloud: Cloud) -> Emulator {
        let port = super::pg::free_port();
        let data = tempfile::tempdir().unwrap();
        let dir = emulators_dir();
        let mut cmd = match cloud {
            Cloud::Gcs => {
                let mut cmd = Command::new(dir.join("gcs/bin/gcp-storage-emulator"));
                cmd.args(["start", "--host", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .arg("--in-memory");
                cmd
            }
            Cloud::Azure => {
                let mut cmd = Command::new(dir.join("azurite/node_modules/.bin/azurite-blob"));
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
                    .arg(port.to_string())
                    .arg("--location")
                    .arg(data.path())
                    .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start the {cloud:?} emulator from {} ({e}): run scripts/test.sh, which installs it",
                dir.display()
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{cloud:?} emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Emulator {
            cloud,
            port,
            child: Some(child),
            _data: data,
        }
    }

    /// Stops the emulator (a store that went away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn base(&self) -> String {
        match self.cloud {
            Cloud::Gcs => format!("http://127.0.0.1:{}", self.port),
            Cloud::Azure => format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port),
        }
    }

    /// Settings for a wale reading `bucket/prefix` (prefix without slashes at its ends).
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        match self.cloud {
            Cloud::Gcs => vec![
                ("WALE_GS_PREFIX".into(), format!("gs://{bucket}/{prefix}")),
                ("WALE_GS_ENDPOINT".into(), self.base()),
            ],
            Cloud::Azure => vec![
                (
                    "WALE_WABS_PREFIX".into(),
                    format!("wabs://{bucket}/{prefix}"),
                ),
                ("WALE_WABS_ENDPOINT".into(), self.base()),
                ("WABS_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
                ("WABS_ACCESS_KEY".into(), AZURITE_KEY.into()),
            ],
        }
    }

    /// Creates the bucket or container.
    pub fn create_bucket(&self, bucket: &str) {
        match self.cloud {
            Cloud::Gcs => curl(&[
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data-binary",
                &format!("{{\"name\":\"{bucket}\"}}"),
                &format!("{}/storage/v1/b", self.base()),
            ]),
            Cloud::Azure => {
                let query = [("restype", "container".to_string())];
                self.azure_put(&format!("/{bucket}"), &query, None)
            }
        }
    }

    /// Uploads every file under `root` as `prefix/<relative path>`, with the name WAL-E
    /// gave it on this cloud (a leading `/` on GCS).
    pub fn upload_tree(&self, bucket: &str, root: &Path, prefix: &str) {
        for file in files_under(root) {
            let relative = file.strip_prefix(root).unwrap().to_str().unwrap();
            let key = format!("{prefix}/{relative}");
            self.upload(bucket, &key, &file);
        }
    }

    /// Uploads one file as the logical `key`.
    pub fn upload(&self, bucket: &str, key: &str, file: &Path) {
        match self.cloud {
            Cloud::Gcs => {
                let name = percent(&format!("/{key}"));
                curl(&[
                    "-X",
                    "POST",
                    "-H",
                    "content-type: application/octet-stream",
                    "--data-binary",
                    &format!("@{}", file.display()),
                    &format!(
                        "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}",
                        self.base()
                    ),
                ]);
            }
            Cloud::Azure => self.azure_put(&format!("/{bucket}/{key}"), &[], Some(file)),
        }
    }

    /// A signed PUT to Azurite (a container, or a block blob from `file`).
    fn azure_put(&self, path: &str, query: &[(&str, String)], file: Option<&Path>) {
        let mut headers = vec![
            ("x-ms-date", httpdate_now()),
            (
                "x-ms-version",
                wale::storage::azure::API_VERSION.to_string(),
            ),
        ];
        if let Some(file) = file {
            headers.push(("x-ms-blob-type", "BlockBlob".into()));
            headers.push(("content-length", file.metadata().unwrap().len().to_string()));
        }
        let key = base64_decode(AZURITE_KEY);
        let signature = wale::storage::azure::shared_key_signature(
            &key,
            AZURITE_ACCOUNT,
            "PUT",
            &headers,
            &format!("/{AZURITE_ACCOUNT}{path}"),
            query,
        );
        let mut args: Vec<String> = vec!["-X".into(), "PUT".into()];
        for (name, value) in headers.iter().filter(|(n, _)| *n != "content-length") {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        args.extend([
            "-H".into(),
            format!("authorization: SharedKey {AZURITE_ACCOUNT}:{signature}"),
        ]);
        match file {
            Some(file) => args.extend(["-T".into(), file.display().to_string()]),
            None => args.extend(["-H".into(), "content-length: 0".into()]),
        }
        let query: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        args.push(format!("{}{path}{query}", self.base()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs curl, failing the test on an HTTP error.
fn curl(args: &[&str]) {
    let out = Command::new("curl")
        // No `Expect: 100-continue`: the GCS emulator speaks HTTP/1.0 and would stall.
        .args([
            "-sS",
            "--fail-with-body",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "Expect:"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn httpdate_now() -> String {
    httpdate::fmt_http_date(SystemTime::now())
}

fn base64_decode(text: &str) -> Vec<u8> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap()
}
