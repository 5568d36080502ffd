//! What the suite's benchmarks share: the benchmark archive and the mode (quick or full),
//! timing child processes (wall time and peak RSS), medians, finding real WAL-E, and the
//! JSON results file that `scripts/bench_report.py` turns into the README's table and
//! chart (`scripts/bench.sh` runs it all).
//!
//! Environment: `WALE_BENCH_ARCHIVE` (the archive made by `fixtures/make-bench-archive.sh`,
//! default `/var/tmp/wale-bench-cache/archive`), `WALE_BENCH_QUICK=1` (fewer runs),
//! `WALE_BENCH_RESULTS` (default `target/bench-results`), `WALE_E_BIN` (WAL-E's `wal-e`),
//! `WALE_BENCH_REQUIRE_WAL_E=1` (a missing WAL-E is an error rather than missing rows).

#![allow(dead_code)] // each bench uses its own part of this module

#[path = "../../tests/common/mod.rs"]
pub mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One bench's settings and the rows it has measured so far.
pub struct Suite {
    bench: &'static str,
    /// Fewer runs, for `scripts/bench.sh --quick`.
    pub quick: bool,
    /// The WAL-E archive every bench measures (`basebackups_005/`, `wal_005/`).
    pub archive: PathBuf,
    results: PathBuf,
    rows: Vec<Value>,
    comparisons: Vec<Value>,
}

/// What one comparison in the targets table puts side by side.
pub struct Comparison<'a> {
    /// The row label in the targets table and the chart.
    pub label: &'a str,
    pub section: &'a str,
    pub case: &'a str,
    /// The tool whose median is divided…
    pub subject: &'a str,
    /// …by this tool's median, in the same section and case.
    pub baseline: &'a str,
    /// The target, as the largest acceptable subject / baseline ratio.
    pub max_ratio: Option<f64>,
    /// The target in words (e.g. "≥ 15× faster than WAL-E").
    pub target: &'a str,
}

impl Suite {
    /// The settings from the environment; exits with a message if the archive is missing.
    pub fn from_env(bench: &'static str) -> Suite {
        let archive = std::env::var_os("WALE_BENCH_ARCHIVE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-bench-cache/archive"));
        if !archive.join("wal_005").is_dir() || !archive.join("basebackups_005").is_dir() {
            eprintln!(
                "{}: no benchmark archive at {}; run scripts/bench.sh (it builds one with real WAL-E) or set WALE_BENCH_ARCHIVE",
                bench,
                archive.display()
            );
            std::process::exit(2);
        }
        let results = std::env::var_os("WALE_BENCH_RESULTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results"));
        std::fs::create_dir_all(&results).expect("create the results directory");
        Suite {
            bench,
            quick: std::env::var("WALE_BENCH_QUICK").is_ok_and(|v| v == "1"),
            archive,
            results,
            rows: Vec::new(),
            comparisons: Vec::new(),
        }
    }

    /// How many times to run a measurement in this mode.
    pub fn runs(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// Where the results go (criterion's own output lives below it too).
    pub fn results_dir(&self) -> &Path {
        &self.results
    }

    /// Records (and prints) one tool's samples in one case. `bytes` is the data the case
    /// produces, for a throughput column.
    pub fn record(
        &mut self,
        (section, case, tool): (&str, &str, &str),
        samples: &Samples,
        bytes: Option<u64>,
        note: &str,
    ) {
        let (median, p90) = (samples.median(), samples.p90());
        let rss = samples.peak_rss_kb();
        println!(
            "{section} | {case} | {tool:<34} median {:>10} p90 {:>10}{}{}",
            human(median),
            human(p90),
            rss.map(|kb| format!("  peak RSS {:.1} MB", kb as f64 / 1024.0))
                .unwrap_or_default(),
            bytes
                .map(|b| format!("  {:.0} MB/s", b as f64 / 1e6 / median.as_secs_f64()))
                .unwrap_or_default(),
        );
        self.rows.push(json!({
            "section": section,
            "case": case,
            "tool": tool,
            "median_s": median.as_secs_f64(),
            "p90_s": p90.as_secs_f64(),
            "runs": samples.times.len(),
            "peak_rss_kb": rss,
            "bytes": bytes,
            "note": note,
        }));
    }

    /// Like [`Suite::compare`], with a limit on the subject's median as well (a target
    /// such as "no slower than the peer, and at most 2 ms").
    pub fn compare_within(&mut self, c: Comparison<'_>, max_subject: Duration) {
        self.compare(c);
        if let Some(Value::Object(last)) = self.comparisons.last_mut() {
            last.insert("max_subject_s".into(), json!(max_subject.as_secs_f64()));
        }
    }

    /// Puts two recorded tools side by side in the targets table.
    pub fn compare(&mut self, c: Comparison<'_>) {
        self.comparisons.push(json!({
            "label": c.label,
            "section": c.section,
            "case": c.case,
            "subject": c.subject,
            "baseline": c.baseline,
            "max_ratio": c.max_ratio,
            "target": c.target,
        }));
    }

    /// Writes `<results>/<bench>.json`.
    pub fn save(self) {
        let path = self.results.join(format!("{}.json", self.bench));
        let doc = json!({
            "bench": self.bench,
            "quick": self.quick,
            "rows": self.rows,
            "comparisons": self.comparisons,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).expect("write results");
        println!("results: {}", path.display());
    }
}

/// The runs of one measurement.
#[derive(Default, Clone)]
pub struct Samples {
    times: Vec<Duration>,
    rss_kb: Vec<i64>,
}

impl Samples {
    /// Wall times measured by the caller.
    pub fn of_times(times: Vec<Duration>) -> Samples {
        Samples {
            times,
            rss_kb: Vec::new(),
        }
    }

    /// Runs `f` `runs` times after `warmup` untimed runs.
    pub fn collect(runs: usize, warmup: usize, mut f: impl FnMut() -> Sample) -> Samples {
        for _ in 0..warmup {
            f();
        }
        let mut samples = Samples::default();
        for _ in 0..runs {
            samples.push(f());
        }
        samples
    }

    pub fn push(&mut self, sample: Sample) {
        self.times.push(sample.elapsed);
        if let Some(kb) = sample.peak_rss_kb {
            self.rss_kb.push(kb);
        }
    }

    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p90(&self) -> Duration {
        self.quantile(0.9)
    }

    /// "n runs, min–max", for a row's note where the spread matters.
    pub fn spread(&self) -> String {
        let min = self.times.iter().min().copied().unwrap_or_default();
        let max = self.times.iter().max().copied().unwrap_or_default();
        format!("{} runs, {}–{}", self.times.len(), human(min), human(max))
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort();
        let at = ((sorted.len().max(1) - 1) as f64 * q).round() as usize;
        sorted.get(at).copied().unwrap_or_default()
    }

    /// The largest peak RSS seen in any run.
    pub fn peak_rss_kb(&self) -> Option<i64> {
        self.rss_kb.iter().copied().max()
    }
}

/// One run of a child process.
#[derive(Clone, Copy)]
pub struct Sample {
    pub elapsed: Duration,
    /// The peak resident set of the largest process in the child's tree (`ru_maxrss`).
    pub peak_rss_kb: Option<i64>,
}

/// Runs `cmd` to completion (stdin and stdout on /dev/null), timing it and reading its
/// peak RSS; panics, showing the command and its stderr, if it fails.
pub fn run(cmd: Command) -> Sample {
    run_expecting(cmd, 0)
}

/// Like [`run`] for a command whose exit code is part of the case (e.g. 1 for a
/// missing segment).
pub fn run_expecting(mut cmd: Command, code: i32) -> Sample {
    let stderr = tempfile::tempfile().expect("a temporary file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().expect("clone the stderr file"));
    let start = Instant::now();
    // Reaped by wait4 below, which also reports the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the child has not been waited for.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code) {
        panic!(
            "{cmd:?}: status {status:#x}, expected exit {code}; its stderr ends with:\n{}",
            tail_of(stderr)
        );
    }
    Sample {
        elapsed,
        peak_rss_kb: Some(usage.ru_maxrss),
    }
}

/// The last 2000 bytes written to `file`.
fn tail_of(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(2000)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// Real WAL-E 1.1.1's `wal-e`: `$WALE_E_BIN`, else the venv `scripts/bench.sh` installs.
/// With `WALE_BENCH_REQUIRE_WAL_E=1` (as the suite runs) a missing WAL-E is fatal.
pub fn wal_e_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("WALE_E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wale-fixture-cache/venv/bin/wal-e"));
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var("WALE_BENCH_REQUIRE_WAL_E").is_ok_and(|v| v == "1") {
        panic!(
            "WAL-E not found at {}: scripts/bench.sh installs it",
            bin.display()
        );
    }
    println!(
        "WAL-E not found at {} (set WALE_E_BIN or run scripts/bench.sh): no WAL-E rows",
        bin.display()
    );
    None
}

/// `wal-e` with only PATH from our environment, logging to stderr (it has no syslog here).
pub fn wal_e(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WALE_LOG_DESTINATION", "stderr");
    cmd
}

/// Flushes every dirty page, so that no run pays for the previous run's writeback.
pub fn sync_all() {
    assert!(Command::new("sync").status().expect("sync").success());
}

/// Hard-links (or copies, across file systems) the tree `from` into `to`.
pub fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let cp = |flags: &str| {
        Command::new("cp")
            .arg(flags)
            .arg(format!("{}/.", from.display()))
            .arg(to)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(cp("-al") || cp("-a"), "cannot copy {}", from.display());
}

/// The archive's segment names (`wal_005/*.lzo`, no history files), sorted.
pub fn wal_segments(archive: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(archive.join("wal_005"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".lzo")?;
            (stem.len() == 24).then(|| stem.to_string())
        })
        .collect();
    names.sort();
    names
}

/// The newest complete backup by name.
pub fn latest_backup(archive: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(archive.join("basebackups_005"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix("_backup_stop_sentinel.json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names.pop().expect("a complete backup")
}

/// A backup's tar partitions, in order.
pub fn partitions_of(archive: &Path, backup: &str) -> Vec<PathBuf> {
    let dir = archive
        .join("basebackups_005")
        .join(backup)
        .join("tar_partitions");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    parts
}

/// The sentinel's expanded size of a backup.
pub fn restored_bytes(archive: &Path, backup: &str) -> u64 {
    let sentinel = archive
        .join("basebackups_005")
        .join(format!("{backup}_backup_stop_sentinel.json"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sentinel).unwrap()).unwrap();
    json["expanded_size_bytes"].as_u64().unwrap_or(0)
}

/// A duration for people: "13.6 ms", "2.31 s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// A scratch directory on disk (`/var/tmp`, not a tmpfs), open to PostgreSQL's `postgres`
/// user below it.
pub fn postgres_work_dir(prefix: &str) -> tempfile::TempDir {
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    work
}

/// The archive at `source`, hard-linked into a scratch S3 root and served by s3s-fs on
/// loopback. Each object gets the ETag record s3s-fs writes when an object is uploaded
/// (as WAL-E's uploads would have made); without it s3s-fs hashes the whole object on
/// every GET before answering, which real S3 does not.
pub fn serve_over_s3(source: &Path) -> (common::Archive, common::S3Server) {
    let (archive, server) = serve_over_stock_s3(source);
    write_etag_records(&archive);
    (archive, server)
}

/// The archive served by s3s-fs as it comes (no ETag records): it hashes the whole object
/// before answering each GET.
pub fn serve_over_stock_s3(source: &Path) -> (common::Archive, common::S3Server) {
    let archive = common::Archive::empty();
    link_tree(source, &archive.root());
    let server = common::S3Server::start(&archive.s3_root());
    (archive, server)
}

/// s3s-fs's per-object ETag records, as its uploads write them.
fn write_etag_records(archive: &common::Archive) {
    let s3_root = archive.s3_root();
    let listing = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -print0 | xargs -0 md5sum")
        .current_dir(archive.root())
        .output()
        .expect("md5sum");
    assert!(listing.status.success(), "md5sum failed");
    for line in String::from_utf8(listing.stdout).unwrap().lines() {
        let (md5, path) = line.split_once("  ./").expect("md5sum output");
        let key = format!("{}/{path}", archive.prefix);
        let record = s3_root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            base64_url(archive.bucket.as_bytes()),
            base64_url(key.as_bytes())
        ));
        std::fs::write(record, format!("{{\"e_tag\":\"{md5}\"}}")).unwrap();
    }
}

/// URL-safe base64 without padding (how s3s-fs names its per-object records).
fn base64_url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A value of the archive's `meta.env` (written by `fixtures/make-bench-archive.sh` beside
/// the archive directory), if it has one.
pub fn archive_meta(archive: &Path, key: &str) -> Option<String> {
    let meta = archive.parent()?.join("meta.env");
    let text = std::fs::read_to_string(meta).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
}

/// pgBackRest's copy of the benchmark cluster: a full backup taken right after WAL-E's and
/// every segment pushed by the same `archive_command`, in a local-disk repository (lz4,
/// one process per core).
pub struct PgBackRest {
    pub config: PathBuf,
    pub stanza: String,
    pub version: String,
}

impl PgBackRest {
    /// The copy made with the archive, if there is one; with `WALE_BENCH_REQUIRE_WAL_E=1`
    /// (as the suite runs) its absence is fatal, as WAL-E's is.
    pub fn of_archive(archive: &Path) -> Option<PgBackRest> {
        let found = archive_meta(archive, "PGBACKREST_CONFIG").map(|config| PgBackRest {
            config: PathBuf::from(config),
            stanza: archive_meta(archive, "PGBACKREST_STANZA").unwrap_or_else(|| "bench".into()),
            version: archive_meta(archive, "PGBACKREST_VERSION").unwrap_or_default(),
        });
        if found.as_ref().is_some_and(|p| p.config.is_file()) {
            return found;
        }
        if std::env::var("WALE_BENCH_REQUIRE_WAL_E").is_ok_and(|v| v == "1") {
            panic!("the archive has no pgBackRest copy: scripts/bench.sh rebuilds it");
        }
        println!(
            "no pgBackRest copy beside {}: no pgBackRest rows",
            archive.display()
        );
        None
    }

    /// The tool's name and version, for row labels.
    pub fn name(&self) -> String {
        format!("pgBackRest {}", self.version)
    }

    /// `pgbackrest --config=… --stanza=… ARGS`, as `postgres` (the repository's owner;
    /// through `setpriv`, which only changes ids and execs, when we are root), logging
    /// nothing to files (warnings to stderr, its default).
    pub fn command(&self, args: &[&str]) -> Command {
        // SAFETY: geteuid has no preconditions.
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "pgbackrest",
            ]);
            cmd
        } else {
            Command::new("pgbackrest")
        };
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={}", self.stanza))
            .arg("--log-level-file=off")
            .args(args);
        cmd
    }

    /// The same as a shell command line, for `restore_command`.
    pub fn command_line(&self, args: &str) -> String {
        format!(
            "pgbackrest --config={} --stanza={} --log-level-file=off {args}",
            self.config.display(),
            self.stanza
        )
    }
}
