//! A real OpenStack Swift on loopback, started per test: Swift 2.38.3 from PyPI, installed
//! by `scripts/test.sh` in a venv under `WALE_EMULATORS` (default
//! `/var/tmp/wale-emulators/swift`). Four single-process servers (proxy with tempauth,
//! account, container, object) on free ports of 127.0.0.1, one device and one replica in a
//! temporary directory (its file system must take user xattrs, where Swift keeps object
//! metadata), run as an unprivileged user. Archives are uploaded with WAL-E's object
//! names: the logical key with a leading `/`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tempauth account, user and key every rig has (`user_test_tester = testing .admin`).
pub const SWIFT_USER: &str = "test:tester";
pub const SWIFT_KEY: &str = "testing";

/// Fernet keys for tempauth's self-contained tokens (no memcached needed); restarting the
/// proxy with the other one revokes every token issued before.
const FERNET_KEYS: [(&str, &str); 2] = [
    ("one", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
    ("two", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="),
];

/// Builds the three rings in one Python process (the ring builder CLI would take nine).
const RINGS_PY: &str = r#"
import sys
from swift.common.ring import RingBuilder
swift_dir = sys.argv[1]
for kind, port in zip(("account", "container", "object"), sys.argv[2:5]):
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                     "port": int(port), "device": "d1", "weight": 1})
    builder.rebalance()
    builder.get_ring().save("%s/%s.ring.gz" % (swift_dir, kind))
"#;

const SERVERS: [&str; 4] = ["proxy", "account", "container", "object"];

fn venv() -> PathBuf {
    std::env::var_os("WALE_EMULATORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-emulators"))
        .join("swift")
}

fn is_root() -> bool {
    wale::users::effective_uid() == 0
}

/// A running Swift, stopped when dropped.
pub struct SwiftServer {
    /// The proxy's port (authentication and the object API).
    pub port: u16,
    ports: [u16; 4],
    children: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    token_life: u64,
}

impl SwiftServer {
    /// A Swift whose tokens live an hour.
    pub fn start() -> SwiftServer {
        SwiftServer::start_with_token_life(3600)
    }

    /// A Swift whose tempauth tokens live `token_life` seconds.
    pub fn start_with_token_life(token_life: u64) -> SwiftServer {
        let dir = tempfile::Builder::new()
            .prefix("wale-swift")
            .tempdir_in("/var/tmp")
            .unwrap();
        assert_takes_user_xattrs(dir.path());
        let ports = [
            super::pg::free_port(),
            super::pg::free_port(),
            super::pg::free_port(),
            super::pg::free_port(),
        ];
        let mut server = SwiftServer {
            port: ports[0],
            ports,
            children: Vec::new(),
            dir,
            token_life,
        };
        server.configure();
        for index in 0..SERVERS.len() {
            let child = server.spawn(index);
            server.children.push(Some(child));
        }
        server.wait_until_ready();
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// swift.conf, the rings, the four servers' configuration, the device directory.
    fn configure(&self) {
        std::fs::create_dir_all(self.path("devices/d1")).unwrap();
        std::fs::write(
            self.path("swift.conf"),
            "[swift-hash]\nswift_hash_path_prefix = wale\nswift_hash_path_suffix = tests\n\n\
             [storage-policy:0]\nname = gold\ndefault = yes\n",
        )
        .unwrap();
        let mut rings = Command::new(venv().join("bin/python"));
        rings
            .args(["-W", "ignore", "-c", RINGS_PY])
            .arg(self.dir.path());
        rings.args(self.ports[1..].iter().map(u16::to_string));
        let out = rings.output().unwrap_or_else(|e| {
            panic!(
                "cannot run Swift's Python in {} ({e}): run scripts/test.sh, which installs it",
                venv().display()
            )
        });
        assert!(
            out.status.success(),
            "ring builder: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (index, kind) in SERVERS.iter().enumerate().skip(1) {
            let conf = format!(
                "{}[pipeline:main]\npipeline = {kind}-server\n\n[app:{kind}-server]\nuse = egg:swift#{kind}\n",
                self.common_conf(self.ports[index])
            );
            std::fs::write(self.path(&format!("{kind}.conf")), conf).unwrap();
        }
        self.write_proxy_conf(FERNET_KEYS[0].0);
        self.give_away();
    }

    fn common_conf(&self, port: u16) -> String {
        let user = if is_root() {
            "nobody".to_string()
        } else {
            let out = Command::new("id").arg("-un").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        format!(
            "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nuser = {user}\n\
             devices = {devices}\nmount_check = false\ndisable_fallocate = true\n\
             swift_dir = {dir}\nlog_udp_host = 127.0.0.1\nlog_udp_port = 9\n\n",
            devices = self.path("devices").display(),
            dir = self.dir.path().display(),
        )
    }

    /// The proxy: tempauth with self-contained tokens signed by `active_key`, patient with
    /// its one node on a loaded machine.
    fn write_proxy_conf(&self, active_key: &str) {
        let keys: String = FERNET_KEYS
            .iter()
            .filter(|(id, _)| *id == active_key)
            .map(|(id, key)| format!("fernet_key_{id} = {key}\n"))
            .collect();
        let conf = format!(
            "{common}[pipeline:main]\n\
             pipeline = catch_errors gatekeeper healthcheck proxy-logging tempauth proxy-logging proxy-server\n\n\
             [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\
             conn_timeout = 5\nnode_timeout = 60\nerror_suppression_limit = 100000\n\n\
             [filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {SWIFT_KEY} .admin\n\
             token_life = {life}\n{keys}active_fernet_key_id = {active_key}\n\n\
             [filter:healthcheck]\nuse = egg:swift#healthcheck\n\n\
             [filter:catch_errors]\nuse = egg:swift#catch_errors\n\n\
             [filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n\
             [filter:proxy-logging]\nuse = egg:swift#proxy_logging\n",
            common = self.common_conf(self.ports[0]),
            life = self.token_life,
        );
        std::fs::write(self.path("proxy.conf"), conf).unwrap();
    }

    /// As root, the servers drop to `nobody`, which must own their directory.
    fn give_away(&self) {
        if !is_root() {
            return;
        }
        let mut dirs = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(entry.path());
                } else {
                    std::os::unix::fs::chown(entry.path(), Some(65534), Some(65534)).unwrap();
                }
            }
        }
    }

    fn spawn(&self, index: usize) -> Child {
        let kind = SERVERS[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{kind}.log")))
            .unwrap();
        Command::new(venv().join(format!("bin/swift-{kind}-server")))
            .arg(self.path(&format!("{kind}.conf")))
            .arg("-v")
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start swift-{kind}-server ({e}): run scripts/test.sh")
            })
    }

    /// Waits until every server listens and the proxy answers its health check.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (index, port) in self.ports.iter().enumerate() {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "swift-{}-server did not start:\n{}",
                    SERVERS[index],
                    self.log(SERVERS[index])
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let health = format!("http://127.0.0.1:{}/healthcheck", self.port);
        while curl_status(&["-o", "/dev/null", &health]) != "200" {
            assert!(
                Instant::now() < deadline,
                "the proxy is not healthy:\n{}",
                self.log("proxy")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A server's log (its console output: requests with their statuses, errors).
    pub fn log(&self, kind: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{kind}.log"))).unwrap_or_default()
    }

    /// Restarts the proxy signing tokens with the other key: every token issued so far is
    /// refused (401) from then on, as after a revocation.
    pub fn revoke_tokens(&mut self) {
        self.stop_server(0);
        self.write_proxy_conf(FERNET_KEYS[1].0);
        self.give_away();
        self.children[0] = Some(self.spawn(0));
        self.wait_until_ready();
    }

    fn stop_server(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ports[index])).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every server (a store that went away).
    pub fn stop(&mut self) {
        for index in 0..self.children.len() {
            self.stop_server(index);
        }
    }

    /// The v1 authentication URL.
    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.port)
    }

    /// Settings for a wale reading `container/prefix` with tempauth (auth v1).
    pub fn env(&self, container: &str, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                "WALE_SWIFT_PREFIX".into(),
                format!("swift://{container}/{prefix}"),
            ),
            ("SWIFT_AUTHURL".into(), self.auth_url()),
            ("SWIFT_AUTH_VERSION".into(), "1".into()),
            ("SWIFT_USER".into(), SWIFT_USER.into()),
            ("SWIFT_PASSWORD".into(), SWIFT_KEY.into()),
        ]
    }

    /// A token and the account's storage URL, from tempauth.
    fn token(&self) -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "-D", "-"])
            .args(["-H", &format!("X-Auth-User: {SWIFT_USER}")])
            .args(["-H", &format!("X-Auth-Key: {SWIFT_KEY}")])
            .arg(self.auth_url())
            .output()
            .expect("curl");
        let headers = String::from_utf8_lossy(&out.stdout).to_string();
        let header = |name: &str| {
            headers
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| panic!("no {name} in {headers}"))
        };
        (header("x-auth-token"), header("x-storage-url"))
    }

    /// Creates a container.
    pub fn create_container(&self, container: &str) {
        let (token, storage) = self.token();
        let status = curl_status(&[
            "-X",
            "PUT",
            "-H",
            &format!("X-Auth-Token: {token}"),
            "-o",
            "/dev/null",
            &format!("{storage}/{container}"),
        ]);
        assert!(
            status == "201" || status == "202",
            "PUT container: {status}"
        );
    }

    /// Uploads every file under `root` as `prefix/<relative path>`, named as WAL-E named
    /// it: `/prefix/<relative path>`.
    pub fn upload_tree(&self, container: &str, root: &Path, prefix: &str) {
        let (token, storage) = self.token();
        for file in files_under(root) {
            let relative = file.strip_prefix(root).unwrap().to_str().unwrap();
            put_object(
                &token,
                &storage,
                container,
                &format!("{prefix}/{relative}"),
                &file,
            );
        }
    }

    /// Uploads one file as the logical `key` (named `/key`), with a token of its own.
    pub fn upload(&self, container: &str, key: &str, file: &Path) {
        let (token, storage) = self.token();
        put_object(&token, &storage, container, key, file);
    }
}

impl Drop for SwiftServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Swift keeps object metadata in `user.swift.metadata*` xattrs: a file system without
/// them (some tmpfs) would fail every upload with a 500 far from the cause.
fn assert_takes_user_xattrs(dir: &Path) {
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let set = rustix::fs::setxattr(
        &probe,
        "user.wale-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
    assert!(
        set.is_ok(),
        "{} does not take user xattrs ({}), which Swift needs",
        dir.display(),
        std::io::Error::from(set.unwrap_err())
    );
    std::fs::remove_file(&probe).unwrap();
}

/// PUTs `file` as WAL-E's name for the logical `key`: `/key`.
fn put_object(token: &str, storage: &str, container: &str, key: &str, file: &Path) {
    let status = curl_status(&[
        "-X",
        "PUT",
        "-H",
        &format!("X-Auth-Token: {token}"),
        "-H",
        "Expect:",
        "-T",
        file.to_str().unwrap(),
        "-o",
        "/dev/null",
        &format!("{storage}/{container}//{key}"),
    ]);
    assert_eq!(status, "201", "PUT /{key}");
}

/// Runs curl and returns the HTTP status (`000` when nothing answered).
fn curl_status(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
