//! Test harness: the real `wale` binary in a scrubbed environment, a real S3 server
//! (s3s-fs, checking SigV4 signatures) on 127.0.0.1 with an optional fault injector in
//! front of it, the real `lzop`, and the real WAL-E fixture archive.

#![allow(dead_code)]

pub mod cloud;
pub mod pg;
pub mod swift;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// Sends `signal` to process `pid`. A process already gone is no failure: the tests
/// race their targets on purpose.
pub fn send_signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

pub const ACCESS_KEY: &str = "wale-test-key";
pub const SECRET_KEY: &str = "wale-test-secret";
pub const BUCKET: &str = "wale-test";

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real WAL-E fixture: its `archive/` directory is a `file://` prefix.
pub fn fixture() -> PathBuf {
    repo().join("fixtures/wale-small")
}

/// `KEY=value` lines of the fixture's `meta.env`.
pub fn fixture_meta(key: &str) -> String {
    meta_of(&fixture(), key)
}

/// A `KEY=value` line of a fixture directory's `meta.env`.
pub fn meta_of(fixture_dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(fixture_dir.join("meta.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from {}/meta.env", fixture_dir.display()))
        .trim_matches('"')
        .to_string()
}

/// Names of the fixture's WAL objects (without `.lzo`), sorted.
pub fn fixture_wal_names() -> Vec<String> {
    wal_names_in(&fixture().join("archive"))
}

/// Names of the WAL objects (without `.lzo`) of the archive rooted at `archive`, sorted.
pub fn wal_names_in(archive: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(archive.join("wal_005"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".lzo").map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The `wale` binary with an empty environment but PATH (as under a minimal
/// `restore_command`), so nothing from the developer's shell leaks in.
pub fn wale() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wale"));
    cmd.env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    // Prefetchers started by tests must not outlive them by long.
    cmd.env("WALE_PREFETCH_IDLE_SECONDS", "1");
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Waits up to 10 s for the prefetchers whose command line mentions `needle` to exit,
/// and, when given, for their prefetch `area` to be removed: neither may outlive the idle
/// timeout the tests set (1 s).
pub fn assert_prefetchers_leave(needle: &str, area: Option<&Path>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let busy = || !prefetchers_for(needle).is_empty() || area.is_some_and(Path::exists);
    while busy() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        prefetchers_for(needle).is_empty(),
        "a prefetcher for {needle} is still running"
    );
    if let Some(area) = area {
        assert!(!area.exists(), "{} outlived its prefetcher", area.display());
    }
}

/// Pids of running `wal-prefetch` processes whose command line mentions `needle`.
pub fn prefetchers_for(needle: &str) -> Vec<u32> {
    wale_processes("wal-prefetch", needle)
}

/// Pids of running processes whose command line has `subcommand` and mentions `needle`.
pub fn wale_processes(subcommand: &str, needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(subcommand) && text.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// What a finished command did, with helpers for assertions.
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn of(mut cmd: Command) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("run wale");
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "exit code {} (wanted {code})\nstderr:\n{}\nstdout:\n{}",
            self.code,
            self.stderr,
            self.stdout_text()
        );
        self
    }

    /// The error lines (ERROR level) on stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(": ERROR: "))
            .collect()
    }
}

/// The exit status `wale status` gives for the report its `--json` printed, as the
/// README's table says: 0 caught up, 3 behind, 4 paused at the recovery target, 5 not
/// running, 7 running and not in recovery.
pub fn status_code_for(report: &serde_json::Value) -> i32 {
    if report["caught_up"] == true {
        0
    } else if report["paused_at_target"] == true {
        4
    } else if report["running"] != true || report["in_recovery"].is_null() {
        5
    } else if report["in_recovery"] == false {
        7
    } else {
        3
    }
}

/// Runs a `wale status … --json` command; its report, once its exit status is checked
/// against what the report says.
pub fn status_json(cmd: Command) -> serde_json::Value {
    let run = Run::of(cmd);
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "status printed no JSON ({e}): exit {}\n{}",
            run.code, run.stderr
        )
    });
    assert_eq!(
        run.code,
        status_code_for(&report),
        "status exit code disagrees with its report {report:#}\nstderr: {}",
        run.stderr
    );
    report
}

/// `lzop -d -c` of a file, the reference decoder.
pub fn lzop_decompress(path: &Path) -> Vec<u8> {
    let out = Command::new("lzop")
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .expect("lzop must be installed (apt-get install lzop)");
    assert!(out.status.success(), "lzop -d {} failed", path.display());
    out.stdout
}

/// `lzop -c` of bytes fed through a pipe, with extra flags (e.g. `-9`).
pub fn lzop_compress(data: &[u8], flags: &[&str]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("lzop")
        .arg("-c")
        .args(flags)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("lzop must be installed (apt-get install lzop)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Copies a directory tree, keeping file modification times (they are what `backup-list`
/// prints and what `LATEST` orders by).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mtime = entry.metadata().unwrap().modified().unwrap();
            set_mtime(&target, mtime);
        }
    }
}

pub fn set_mtime(path: &Path, mtime: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// A scratch directory holding an archive served both as `file://` and over S3.
pub struct Archive {
    pub dir: tempfile::TempDir,
    /// The bucket the archive is served from over S3.
    pub bucket: &'static str,
    /// The prefix inside the bucket, e.g. `db1/`.
    pub prefix: &'static str,
}

impl Archive {
    /// A copy of the real WAL-E fixture at `s3://wale-test/db1` and the matching file path.
    pub fn fixture_copy() -> Archive {
        Archive::fixture_copy_in(BUCKET)
    }

    /// The fixture in another bucket.
    pub fn fixture_copy_in(bucket: &'static str) -> Archive {
        let archive = Archive::empty_in(bucket);
        copy_tree(&fixture().join("archive"), &archive.root());
        archive
    }

    pub fn empty() -> Archive {
        Archive::empty_in(BUCKET)
    }

    fn empty_in(bucket: &'static str) -> Archive {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive {
            dir,
            bucket,
            prefix: "db1",
        };
        std::fs::create_dir_all(archive.root()).unwrap();
        archive
    }

    /// The s3s-fs root (one directory per bucket).
    pub fn s3_root(&self) -> PathBuf {
        self.dir.path().join("s3")
    }

    /// The directory that holds `basebackups_005/` and `wal_005/`.
    pub fn root(&self) -> PathBuf {
        self.s3_root().join(self.bucket).join(self.prefix)
    }

    pub fn file_prefix(&self) -> String {
        format!("file://{}", self.root().display())
    }

    pub fn s3_prefix(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    pub fn wal_object(&self, name: &str) -> PathBuf {
        self.root().join("wal_005").join(format!("{name}.lzo"))
    }
}

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    S3,
}

pub const BACKENDS: [Backend; 2] = [Backend::File, Backend::S3];

/// A wale command configured for an archive on a backend (S3 needs a running server).
pub fn wale_for(archive: &Archive, backend: Backend, server: Option<&S3Server>) -> Command {
    let mut cmd = wale();
    match backend {
        Backend::File => {
            cmd.env("WALE_FILE_PREFIX", archive.file_prefix());
        }
        Backend::S3 => {
            let server = server.expect("S3 backend needs a server");
            for (k, v) in server.env(archive) {
                cmd.env(k, v);
            }
        }
    }
    cmd
}

/// Requests to an IP address are path style; a request to a host name addresses the
/// bucket of that name (WAL-E's `virtualhost` convention: the bucket is the host).
struct BucketNamedHosts;

impl s3s::host::S3Host for BucketNamedHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let vhost = s3s::host::VirtualHost::new(host);
        if name.parse::<std::net::IpAddr>().is_ok() {
            Ok(vhost)
        } else {
            Ok(vhost.with_bucket(name))
        }
    }
}

/// A fault the injector applies to the next matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this HTTP status and an S3 error body.
    Status(u16, &'static str),
    /// Send the real response's headers but only this many body bytes, then drop the
    /// connection.
    Truncate(usize),
    /// Drop the connection without answering.
    Reset,
    /// Answer normally after this many milliseconds.
    Stall(u64),
}

#[derive(Default)]
struct Faults {
    queue: Mutex<VecDeque<(String, Fault)>>,
    requests: Mutex<Vec<String>>,
}

/// s3s-fs serving a directory on 127.0.0.1, requiring SigV4 signatures with the test
/// keys, with a fault injector in front. Stops when dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    pub fn start(root: &Path) -> S3Server {
        S3Server::start_at(root, 0)
    }

    /// As [`S3Server::start`], on a given port (0: any), e.g. again after an outage.
    pub fn start_at(root: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(root).unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        builder.set_host(BucketNamedHosts);
        let s3 = builder.build();
        let faults = Arc::new(Faults::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, mut shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_faults = faults.clone();
        let objects = Arc::new(root.to_path_buf());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let (socket, _) = tokio::select! {
                        accepted = listener.accept() => accepted.unwrap(),
                        _ = &mut shutdown_rx => break,
                    };
                    // As servers do: no Nagle delay on the last small piece of a body.
                    let _ = socket.set_nodelay(true);
                    let (s3, faults, objects) =
                        (s3.clone(), thread_faults.clone(), objects.clone());
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (s3, faults, objects) = (s3.clone(), faults.clone(), objects.clone());
                        async move { serve(s3, faults, &objects, req).await }
                    });
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(socket), service)
                            .await;
                    });
                }
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        S3Server {
            addr,
            faults,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// `WALE_S3_ENDPOINT=http+path://127.0.0.1:PORT` and the keys.
    pub fn env(&self, archive: &Archive) -> Vec<(String, String)> {
        vec![
            ("WALE_S3_PREFIX".into(), archive.s3_prefix()),
            (
                "WALE_S3_ENDPOINT".into(),
                format!("http+path://127.0.0.1:{}", self.addr.port()),
            ),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// Applies `fault` to the next request whose path contains `path_part`.
    pub fn inject(&self, path_part: &str, fault: Fault) {
        self.faults
            .queue
            .lock()
            .unwrap()
            .push_back((path_part.to_string(), fault));
    }

    /// Drops faults that no request has met yet.
    pub fn clear_faults(&self) {
        self.faults.queue.lock().unwrap().clear();
    }

    /// `METHOD path?query` of every request seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.faults.requests.lock().unwrap().clone()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    s3: s3s::service::S3Service,
    faults: Arc<Faults>,
    root: &Path,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    // A GetObject (the AWS SDK tags it with `x-id=GetObject`; boto adds no query).
    let get_object = req.method() == hyper::Method::GET
        && matches!(req.uri().query(), None | Some("x-id=GetObject"));
    let object = get_object.then(|| root.join(req.uri().path().trim_start_matches('/')));
    let target = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    faults.requests.lock().unwrap().push(target.clone());
    let fault = {
        let mut queue = faults.queue.lock().unwrap();
        let pos = queue
            .iter()
            .position(|(part, _)| target.contains(part.as_str()));
        pos.and_then(|i| queue.remove(i)).map(|(_, f)| f)
    };
    match fault {
        None => {
            let resp = s3.call(req.map(s3s::Body::from)).await?;
            Ok(match object {
                Some(path) => with_fast_body(resp, &path),
                None => resp,
            })
        }
        Some(Fault::Status(status, code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
            );
            Ok(hyper::Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(s3s::Body::from(body))
                .unwrap())
        }
        Some(Fault::Reset) => Err(s3s::HttpError::new(Box::new(std::io::Error::other(
            "injected connection reset",
        )))),
        Some(Fault::Stall(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            s3.call(req.map(s3s::Body::from)).await
        }
        Some(Fault::Truncate(keep)) => {
            let resp = s3.call(req.map(s3s::Body::from)).await?;
            let (parts, body) = resp.into_parts();
            let full = body.collect().await.unwrap().to_bytes();
            let head = Bytes::copy_from_slice(&full[..keep.min(full.len())]);
            let stream = truncated_body(head);
            Ok(hyper::Response::from_parts(
                parts,
                s3s::Body::http_body(stream),
            ))
        }
    }
}

/// s3s-fs streams an object 4 KiB at a time, each read a trip through tokio's blocking
/// pool: about 130 MB/s, slower than S3 itself, which would make the benchmarks measure
/// this server. For a successful GetObject whose file is found, the body s3s built
/// (after checking the signature, with its headers) is replaced by the same bytes read
/// 256 KiB at a time. Anything else is passed through untouched.
fn with_fast_body(resp: s3s::HttpResponse, path: &Path) -> s3s::HttpResponse {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(length) = header("content-length").and_then(|v| v.parse::<u64>().ok()) else {
        return resp;
    };
    let (offset, total) = match (resp.status().as_u16(), header("content-range")) {
        (200, None) => (0, length),
        (206, Some(range)) => {
            let parsed = range.strip_prefix("bytes ").and_then(|r| {
                let (span, total) = r.split_once('/')?;
                Some((span.split_once('-')?.0.parse().ok()?, total.parse().ok()?))
            });
            match parsed {
                Some(p) => p,
                None => return resp,
            }
        }
        _ => return resp,
    };
    let Ok(mut file) = std::fs::File::open(path) else {
        return resp;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(total) {
        return resp;
    }
    use std::io::{Read as _, Seek as _};
    if file.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return resp;
    }
    let chunks = futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = left.min(256 * 1024) as usize;
        let (file, read) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; want];
            let read = file.read_exact(&mut buf).map(|()| Bytes::from(buf));
            (file, read)
        })
        .await
        .unwrap();
        let frame = read.map(hyper::body::Frame::data);
        Some((frame, (file, left - want as u64)))
    });
    let (parts, _) = resp.into_parts();
    hyper::Response::from_parts(
        parts,
        s3s::Body::http_body(http_body_util::StreamBody::new(chunks)),
    )
}

/// A body that yields `head` and then fails, so hyper drops the connection mid-body.
fn truncated_body(
    head: Bytes,
) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let items: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(head)),
        Err(std::io::Error::other("injected truncation")),
    ];
    StreamBody::new(futures_util::stream::iter(items))
}

/// One line per path under `root` (not following symlinks), sorted, in the format of
/// `fixtures/wale-small/wal-e-restore-manifest.txt`: path, type (d/f/l, or h for a second
/// name of a file already listed), permission bits, size, and the SHA-256 of a file, the
/// target of a link, or the first name of a hard-linked file.
pub fn manifest(root: &Path) -> Vec<String> {
    use sha2::Digest;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.clone());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut paths = vec![root.to_path_buf()];
    walk(root, &mut paths);
    let name = |p: &Path| match p.strip_prefix(root).unwrap().display().to_string() {
        s if s.is_empty() => ".".to_string(),
        s => s,
    };
    paths.sort_by_key(|p| name(p));
    let mut first_names = std::collections::HashMap::new();
    paths
        .iter()
        .map(|path| {
            let relative = name(path);
            let meta = std::fs::symlink_metadata(path).unwrap();
            let mode = format!("{:04o}", meta.permissions().mode() & 0o7777);
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).unwrap();
                format!("{relative}\tl\t{mode}\t-\t{}", target.display())
            } else if meta.is_dir() {
                format!("{relative}\td\t{mode}\t-\t-")
            } else if let Some(first) = first_names.get(&(meta.dev(), meta.ino())) {
                format!("{relative}\th\t{mode}\t{}\t{first}", meta.len())
            } else {
                first_names.insert((meta.dev(), meta.ino()), relative.clone());
                let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("{relative}\tf\t{mode}\t{}\t{hex}", meta.len())
            }
        })
        .collect()
}

/// Panics with the first differences when two manifests differ.
pub fn assert_same_tree(got: &[String], expected: &[String], what: &str) {
    if got != expected {
        let missing: Vec<_> = expected
            .iter()
            .filter(|l| !got.contains(l))
            .take(10)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|l| !expected.contains(l))
            .take(10)
            .collect();
        panic!("{what}: the restored tree differs\nmissing: {missing:#?}\nunexpected: {extra:#?}");
    }
}

/// The tree WAL-E's own `backup-fetch` restored from the fixture, with wale's documented
/// differences: `pg_wal` is a real directory instead of the source machine's link, and a
/// blind restore drops the `tablespace_map` that would re-point tablespaces at the
/// source's paths.
pub fn wal_e_restore_manifest() -> Vec<String> {
    let text = std::fs::read_to_string(fixture().join("wal-e-restore-manifest.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with("tablespace_map\t"))
        .map(|l| {
            if l.starts_with("pg_wal\tl\t") {
                "pg_wal\td\t0700\t-\t-".to_string()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs (the tests that call this are ignored unless built as root).
    pub fn mount(size: &str, read_only: bool) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        // Others may pass (a server running as postgres, say), as through /mnt.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let options = format!("size={size}{}", if read_only { ",ro" } else { "" });
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(&path)
            .status();
        assert!(
            mounted.is_ok_and(|s| s.success()),
            "cannot mount a tmpfs at {} as root",
            path.display()
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
