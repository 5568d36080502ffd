//! `wal-fetch` as PostgreSQL runs it, a new process per call, against baselines measured
//! in the same run: real WAL-E 1.1.1, and `lzop -d` of the same object from local disk
//! (with and without the fsync wale does). Segments come from the benchmark archive
//! (real WAL-E objects of a pgbench workload): the median-sized one, and the smallest (a
//! segment cut short by `pg_switch_wal()`, mostly zeros). Also: a missing segment, a
//! prefetch hit (both tools with their prefetch on, calls spaced as replay spaces them),
//! a prefetch hit alone (one ready segment, the prefetcher's lock held) against process
//! start-up (`version`), what PostgreSQL's fsyncs of the file it keeps cost after a hit
//! and after a cold fetch, and process start-up against WAL-E.
//!
//! Against the store's limit: the largest segment's object fetched by one raw GET
//! (`curl` signing with SigV4) from the same server, tuned (with s3s-fs's ETag records,
//! as its own uploads leave them) and stock (without: it hashes the object before each
//! answer). Against pgBackRest: a single `archive-get` from its local repository of the
//! same WAL, and a queue hit of its asynchronous `archive-get` in recovery's order.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench wal_fetch` (see `support` for the
//! environment). The S3 server is s3s-fs, in this process, on loopback.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::common::{self, Archive, Backend, S3Server, wale_for};
use support::{Comparison, PgBackRest, Samples, Suite, run, run_expecting, wal_e, wal_e_bin};

const COLD: &str = "wal-fetch, cold process";
const HIT: &str = "wal-fetch, prefetch hit";
const START: &str = "process start-up";
const KEEP: &str = "PostgreSQL keeping a restored segment (durable_rename: 3 fsyncs and a rename)";
const WALE: &str = "wale";
const WAL_E: &str = "WAL-E 1.1.1";
const STORE: &str = "wal-fetch, cold process, against the store";
const CURL: &str = "curl GET of the object (SigV4, one stream)";

/// The archive served both ways, and where segments are written.
struct Bench {
    suite: Suite,
    archive: Archive,
    server: S3Server,
    wal_e: Option<PathBuf>,
    out: tempfile::TempDir,
}

fn main() {
    let suite = Suite::from_env("wal_fetch");
    let (archive, server) = support::serve_over_s3(&suite.archive);
    if let Ok(secs) = std::env::var("WALE_BENCH_SERVE_ONLY") {
        for (k, v) in server.env(&archive) {
            println!("export {k}={v}");
        }
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap()));
        return;
    }
    let out = tempfile::Builder::new()
        .prefix("wale-bench-wal-")
        .tempdir_in("/var/tmp")
        .unwrap();
    support::common::pg::give_to_postgres(out.path());
    let mut bench = Bench {
        wal_e: wal_e_bin(),
        suite,
        archive,
        server,
        out,
    };
    let segments = support::wal_segments(&bench.archive.root());
    let mut sized: Vec<(u64, String)> = segments
        .iter()
        .map(|n| {
            let object = bench.archive.wal_object(n);
            (std::fs::metadata(object).unwrap().len(), n.clone())
        })
        .collect();
    sized.sort();
    let (typical, smallest) = (sized[sized.len() / 2].clone(), sized[0].clone());
    let largest = sized[sized.len() - 1].clone();
    bench.cold(&typical.1, "typical", typical.0);
    bench.cold(&smallest.1, "mostly zeros", smallest.0);
    bench.against_the_store(&largest.1, largest.0);
    bench.not_found();
    let pgbackrest = PgBackRest::of_archive(&bench.suite.archive);
    if let Some(p) = &pgbackrest {
        bench.pgbackrest_cold(p, &typical.1, typical.0);
    }
    bench.prefetch_hits(&segments, pgbackrest.as_ref());
    bench.hit_alone(&typical.1);
    bench.start_up();
    bench.suite.save();
}

impl Bench {
    fn calls(&self) -> usize {
        self.suite.runs(15, 5)
    }

    fn dest(&self) -> PathBuf {
        self.out.path().join("RECOVERYXLOG")
    }

    /// One segment, each tool from S3 and from `file://`, plus the local floors.
    fn cold(&mut self, segment: &str, kind: &str, object_bytes: u64) {
        let dest = self.dest();
        let object = self.archive.wal_object(segment);
        let seg_bytes = Some(16 << 20);
        for (backend, where_) in [(Backend::S3, "S3 loopback"), (Backend::File, "file://")] {
            let case = format!(
                "{kind} segment ({} KB object), {where_}",
                object_bytes / 1000
            );
            let wale = self.times(|| {
                let mut cmd = wale_for(&self.archive, backend, Some(&self.server));
                cmd.args(["--terse", "wal-fetch", "--prefetch", "0", segment])
                    .arg(&dest);
                cmd
            });
            self.suite
                .record((COLD, &case, WALE), &wale, seg_bytes, "--prefetch 0");
            if let Some(bin) = self.wal_e.clone() {
                let e = self.times(|| {
                    let mut cmd = self.wal_e_cmd(&bin, backend);
                    cmd.args(["--terse", "wal-fetch", "--prefetch", "0", segment])
                        .arg(&dest);
                    cmd
                });
                self.suite
                    .record((COLD, &case, WAL_E), &e, seg_bytes, "--prefetch 0");
                self.suite.compare(Comparison {
                    label: &format!("cold wal-fetch, {kind} segment, {where_}"),
                    section: COLD,
                    case: &case,
                    subject: WALE,
                    baseline: WAL_E,
                    max_ratio: Some(1.0 / 15.0),
                    target: "≥ 15× faster than WAL-E",
                });
            }
            if backend == Backend::File {
                self.floors(kind, &case, &object, seg_bytes);
            }
        }
    }

    /// `lzop -d` of the local object: the floor for any lzop-based tool, without and
    /// with the fsync that makes the segment durable.
    fn floors(&mut self, kind: &str, case: &str, object: &Path, bytes: Option<u64>) {
        let dest = self.dest();
        let decode = format!("lzop -d -c '{}' > '{}'", object.display(), dest.display());
        let durable = format!("{decode}; sync -d '{}'", dest.display());
        for (tool, script) in [
            ("lzop -d > file", &decode),
            ("lzop -d > file; sync", &durable),
        ] {
            let samples = self.times(|| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(script);
                cmd
            });
            self.suite
                .record((COLD, case, tool), &samples, bytes, "local object");
        }
        self.suite.compare(Comparison {
            label: &format!("cold wal-fetch, {kind} segment, file:// vs lzop -d + sync"),
            section: COLD,
            case,
            subject: WALE,
            baseline: "lzop -d > file; sync",
            max_ratio: Some(1.0),
            target: "no slower than lzop -d + sync",
        });
    }

    /// The largest segment: wale's whole call against one raw GET of its object from the
    /// same server, tuned and stock.
    fn against_the_store(&mut self, segment: &str, object_bytes: u64) {
        let (stock_archive, stock_server) = support::serve_over_stock_s3(&self.suite.archive);
        let dest = self.dest();
        let servers = [
            ("tuned", &self.archive, &self.server),
            ("stock", &stock_archive, &stock_server),
        ];
        let mut rows = Vec::new();
        for (kind, archive, server) in servers {
            let case = format!(
                "largest segment ({} KB object), S3 loopback, {kind} s3s-fs",
                object_bytes / 1000
            );
            let wale = self.times(|| {
                let mut cmd = wale_for(archive, Backend::S3, Some(server));
                cmd.args(["--terse", "wal-fetch", "--prefetch", "0", segment])
                    .arg(&dest);
                cmd
            });
            let curl = self.times(|| curl_get(archive, server, segment));
            rows.push((kind, case, wale, curl));
        }
        for (kind, case, wale, curl) in rows {
            self.suite
                .record((STORE, &case, WALE), &wale, Some(16 << 20), "--prefetch 0");
            self.suite.record(
                (STORE, &case, CURL),
                &curl,
                Some(object_bytes),
                "to /dev/null",
            );
            self.suite.compare(Comparison {
                label: &format!("cold wal-fetch of the largest segment vs one GET, {kind} s3s-fs"),
                section: STORE,
                case: &case,
                subject: WALE,
                baseline: CURL,
                max_ratio: Some(0.75),
                target: "≤ 0.75× one raw GET of the object",
            });
        }
    }

    /// A single `archive-get` from pgBackRest's local repository against a single
    /// `wal-fetch` from `file://`, the same segment, both cold.
    fn pgbackrest_cold(&mut self, p: &PgBackRest, segment: &str, object_bytes: u64) {
        let dest = self.dest();
        let pg1 = self.control_directory();
        let case = format!(
            "typical segment ({} KB object), file://",
            object_bytes / 1000
        );
        let tool = format!("{} archive-get (local repository)", p.name());
        let samples = self.times(|| {
            let mut cmd = p.command(&["archive-get", segment]);
            cmd.arg(&dest).arg(format!("--pg1-path={}", pg1.display()));
            cmd
        });
        self.suite
            .record((COLD, &case, &tool), &samples, Some(16 << 20), "");
        self.suite.compare(Comparison {
            label: "cold wal-fetch vs pgBackRest archive-get, local",
            section: COLD,
            case: &case,
            subject: WALE,
            baseline: &tool,
            max_ratio: Some(1.0),
            target: "no slower than pgBackRest",
        });
    }

    /// A directory holding the backup's `global/pg_control`, which pgBackRest's
    /// `archive-get` reads to find the archive of this cluster (made once, untimed).
    fn control_directory(&self) -> PathBuf {
        let dir = self.out.path().join("pg1");
        if dir.join("global/pg_control").is_file() {
            return dir;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let backup = support::latest_backup(&self.suite.archive);
        for partition in support::partitions_of(&self.suite.archive, &backup) {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "lzop -d -c '{}' | tar -x -C '{}' global/pg_control 2>/dev/null",
                    partition.display(),
                    dir.display()
                ))
                .status();
        }
        assert!(
            dir.join("global/pg_control").is_file(),
            "no global/pg_control in {backup}"
        );
        support::common::pg::give_to_postgres(&dir);
        dir
    }

    fn not_found(&mut self) {
        let dest = self.dest();
        let missing = "0000000100000009000000FF";
        let case = "segment not in the archive (exit 1), S3 loopback";
        let wale = self.codes(1, || {
            let mut cmd = wale_for(&self.archive, Backend::S3, Some(&self.server));
            cmd.args(["--terse", "wal-fetch", "--prefetch", "0", missing])
                .arg(&dest);
            cmd
        });
        self.suite.record((COLD, case, WALE), &wale, None, "");
        if let Some(bin) = self.wal_e.clone() {
            let e = self.codes(1, || {
                let mut cmd = self.wal_e_cmd(&bin, Backend::S3);
                cmd.args(["--terse", "wal-fetch", "--prefetch", "0", missing])
                    .arg(&dest);
                cmd
            });
            self.suite.record((COLD, case, WAL_E), &e, None, "");
            self.suite.compare(Comparison {
                label: "wal-fetch of a missing segment, S3",
                section: COLD,
                case,
                subject: WALE,
                baseline: WAL_E,
                max_ratio: Some(1.0 / 15.0),
                target: "≥ 15× faster than WAL-E",
            });
        }
    }

    /// Recovery's order of calls, each tool with its default prefetch (8), a pause
    /// between calls like the replay of a segment; every call after the first two timed.
    fn prefetch_hits(&mut self, segments: &[String], pgbackrest: Option<&PgBackRest>) {
        let count = self.suite.runs(24, 10).min(segments.len());
        let sequence = &segments[segments.len() / 4..][..count];
        let case = format!("{count} segments in order, 100 ms apart, S3 loopback");
        let wale = self.replay(
            sequence,
            "restored",
            "from the prefetch area",
            |b, seg, dest| {
                let mut cmd = wale_for(&b.archive, Backend::S3, Some(&b.server));
                cmd.args(["wal-fetch", seg]).arg(dest);
                cmd
            },
        );
        self.suite
            .record((HIT, &case, WALE), &wale.0, Some(16 << 20), &wale.1);
        if let Some(bin) = self.wal_e.clone() {
            let e = self.replay(
                sequence,
                "promoted",
                "prefetched wal segment",
                |b, seg, dest| {
                    let mut cmd = b.wal_e_cmd(&bin, Backend::S3);
                    cmd.args(["wal-fetch", seg]).arg(dest);
                    cmd
                },
            );
            self.suite
                .record((HIT, &case, WAL_E), &e.0, Some(16 << 20), &e.1);
            if let Some(p) = pgbackrest {
                self.queue_hits(p, sequence, &case);
            }
            self.suite.compare(Comparison {
                label: "wal-fetch in recovery order, prefetch on, S3",
                section: HIT,
                case: &case,
                subject: WALE,
                baseline: WAL_E,
                max_ratio: Some(1.0 / 15.0),
                target: "≥ 15× faster than WAL-E",
            });
        }
    }

    /// pgBackRest's asynchronous `archive-get` in the same order (its queue as large as
    /// wale's prefetch, one process per core), from its local repository.
    fn queue_hits(&mut self, p: &PgBackRest, sequence: &[String], case: &str) {
        let pg1 = self.control_directory();
        let spool = self.out.path().join("spool");
        let _ = std::fs::remove_dir_all(&spool);
        std::fs::create_dir_all(&spool).unwrap();
        support::common::pg::give_to_postgres(&spool);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tool = format!("{} archive-get (async queue)", p.name());
        let hits = self.replay(sequence, "found", "asynchronously", |_, seg, dest| {
            let mut cmd = p.command(&[
                "--log-level-console=info",
                "--archive-async",
                "--archive-get-queue-max=128MiB",
                &format!("--process-max={cores}"),
                &format!("--spool-path={}", spool.display()),
                &format!("--pg1-path={}", pg1.display()),
                "archive-get",
                seg,
            ]);
            cmd.arg(dest);
            cmd
        });
        let note = format!("{}; local repository", hits.1);
        self.suite
            .record((HIT, case, &tool), &hits.0, Some(16 << 20), &note);
        self.suite.compare_within(
            Comparison {
                label: "prefetch hit vs pgBackRest queue hit",
                section: HIT,
                case,
                subject: WALE,
                baseline: &tool,
                max_ratio: Some(1.0),
                target: "no slower than pgBackRest's queue, ≤ 2 ms",
            },
            Duration::from_millis(2),
        );
    }

    /// Runs the sequence in a fresh WAL directory; returns the timed calls and a note
    /// saying how many were served from the prefetch area (a log line with both words).
    fn replay(
        &self,
        sequence: &[String],
        word: &str,
        phrase: &str,
        command: impl Fn(&Bench, &str, &Path) -> Command,
    ) -> (Samples, String) {
        let wal_dir = tempfile::tempdir_in(self.out.path()).unwrap();
        support::common::pg::give_to_postgres(wal_dir.path());
        let dest = wal_dir.path().join("RECOVERYXLOG");
        let log = self.out.path().join("replay.log");
        let mut times = Vec::new();
        let mut hits = 0;
        for (i, segment) in sequence.iter().enumerate() {
            let _ = std::fs::remove_file(&dest);
            let mut cmd = command(self, segment, &dest);
            let log_file = std::fs::File::create(&log).unwrap();
            cmd.stdout(log_file.try_clone().unwrap()).stderr(log_file);
            let start = Instant::now();
            let status = cmd.status().unwrap();
            let elapsed = start.elapsed();
            assert!(status.success(), "{cmd:?}");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if i >= 2 {
                times.push(elapsed);
                hits += usize::from(text.lines().any(|l| l.contains(word) && l.contains(phrase)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let both tools' prefetchers finish and leave before the next measurement.
        std::thread::sleep(Duration::from_secs(3));
        let timed = times.len();
        (
            Samples::of_times(times),
            format!("{hits} of {timed} timed calls served from the prefetch area"),
        )
    }

    /// A prefetch hit by itself: one ready segment in the area, the prefetcher's lock held
    /// by this process (so no prefetcher is started), a new `wal-fetch` per call into
    /// `RECOVERYXLOG`, interleaved with `version` (the process start-up a hit cannot go
    /// below). After each hit, and after each cold `--prefetch 0` fetch from `file://`,
    /// what PostgreSQL then does with the file (untimed in the call): fsync it, rename it
    /// to its segment name, fsync that and `pg_wal`, as `KeepFileRestoredFromArchive`
    /// does. The prefetcher fsynced its segment before publishing it; a cold fetch into
    /// `RECOVERYXLOG` leaves the writing to PostgreSQL's fsync.
    fn hit_alone(&mut self, segment: &str) {
        let root = tempfile::tempdir_in(self.out.path()).unwrap();
        let (pg_wal, area) = (root.path().join("pg_wal"), root.path().join("area"));
        std::fs::create_dir_all(area.join("running")).unwrap();
        std::fs::create_dir(&pg_wal).unwrap();
        let plain = root.path().join("segment");
        let decoded = Command::new("lzop")
            .args(["-d", "-c"])
            .arg(self.archive.wal_object(segment))
            .stdout(std::fs::File::create(&plain).unwrap())
            .status()
            .unwrap();
        assert!(decoded.success(), "lzop -d of {segment}");
        support::sync_all();
        let lock = std::fs::File::create(area.join(".lock")).unwrap();
        lock.lock().unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let wal_fetch = |prefetch: &str| {
            let mut cmd = wale_for(&self.archive, Backend::File, None);
            cmd.env("WALE_PREFETCH_DIR", &area)
                .args(["--terse", "wal-fetch", "--prefetch", prefetch, segment])
                .arg(&dest);
            cmd
        };
        let (mut hits, mut starts, mut kept_hit, mut kept_cold) = (vec![], vec![], vec![], vec![]);
        // Start-ups and hits in turn, then the cold fetches apart: each removed 16 MiB
        // file is freed (and discarded) at the next journal commit, flushed by `sync`
        // and left to settle for 100 ms (replay's pace) so that no call pays for another's.
        // More runs than the other rows: a few milliseconds on a shared machine.
        let calls = self.suite.runs(30, 15);
        for i in 0..=calls {
            std::fs::hard_link(&plain, area.join(segment)).unwrap();
            support::sync_all();
            std::thread::sleep(Duration::from_millis(100));
            let mut version = common::wale();
            version.arg("version");
            let start = run(version);
            let hit = run(wal_fetch("8"));
            assert!(!area.join(segment).exists(), "not served from the area");
            let kept = keep_restored(&dest, segment);
            if i > 0 {
                hits.push(hit);
                starts.push(start);
                kept_hit.push(kept);
            }
        }
        for i in 0..=calls {
            run(wal_fetch("0"));
            let kept = keep_restored(&dest, segment);
            support::sync_all();
            std::thread::sleep(Duration::from_millis(100));
            if i > 0 {
                kept_cold.push(kept);
            }
        }
        drop(lock);
        let case = "one ready segment, the prefetcher's lock held, a new process per call";
        let (hit_tool, start_tool) = ("wale wal-fetch, prefetch hit", "wale version");
        let samples = |runs: Vec<support::Sample>| {
            let mut samples = Samples::default();
            runs.into_iter().for_each(|run| samples.push(run));
            samples
        };
        self.suite
            .record((HIT, case, hit_tool), &samples(hits), Some(16 << 20), "");
        self.suite
            .record((HIT, case, start_tool), &samples(starts), None, "");
        self.suite.compare_within(
            Comparison {
                label: "prefetch hit alone vs start-up (`version`)",
                section: HIT,
                case,
                subject: hit_tool,
                baseline: start_tool,
                max_ratio: Some(1.25),
                target: "≤ 1.25× a process start-up, ≤ 2 ms",
            },
            Duration::from_millis(2),
        );
        let case = "16 MiB segment restored by wal-fetch into RECOVERYXLOG";
        let (after_hit, after_cold) = (
            "after a prefetch hit (fsynced by the prefetcher)",
            "after a cold wal-fetch --prefetch 0 (not fsynced)",
        );
        self.suite.record(
            (KEEP, case, after_hit),
            &Samples::of_times(kept_hit),
            None,
            "",
        );
        self.suite.record(
            (KEEP, case, after_cold),
            &Samples::of_times(kept_cold),
            None,
            "",
        );
        self.suite.compare(Comparison {
            label: "PostgreSQL's fsyncs of a restored segment, prefetched vs cold",
            section: KEEP,
            case,
            subject: after_hit,
            baseline: after_cold,
            max_ratio: Some(0.5),
            target: "≤ 0.5× after a cold fetch",
        });
    }

    fn start_up(&mut self) {
        let case = "`version`, a new process per call";
        let wale = self.times(|| {
            let mut cmd = common::wale();
            cmd.arg("version");
            cmd
        });
        self.suite.record((START, case, WALE), &wale, None, "");
        if let Some(bin) = self.wal_e.clone() {
            let e = self.times(|| {
                let mut cmd = wal_e(&bin);
                cmd.arg("version");
                cmd
            });
            self.suite.record((START, case, WAL_E), &e, None, "");
            self.suite.compare(Comparison {
                label: "start-up (`version`)",
                section: START,
                case,
                subject: WALE,
                baseline: WAL_E,
                max_ratio: Some(1.0 / 15.0),
                target: "≥ 15× faster than WAL-E",
            });
        }
    }

    /// WAL-E's environment is what wale gets for the same backend (no `--terse`: the
    /// prefetch replay reads its log).
    fn wal_e_cmd(&self, bin: &Path, backend: Backend) -> Command {
        let mut cmd = wal_e(bin);
        match backend {
            Backend::File => {
                cmd.env("WALE_FILE_PREFIX", self.archive.file_prefix());
            }
            Backend::S3 => {
                cmd.envs(self.server.env(&self.archive));
            }
        }
        cmd
    }

    /// One warm-up, then the timed calls. Before each (untimed) the destination is
    /// removed, as PostgreSQL does, and dirty pages are flushed: WAL-E and `lzop -d` do
    /// not fsync, and their writeback must not land in the next tool's call.
    fn times(&self, command: impl Fn() -> Command) -> Samples {
        let dest = self.dest();
        Samples::collect(self.calls(), 1, || {
            let _ = std::fs::remove_file(&dest);
            support::sync_all();
            run(command())
        })
    }

    fn codes(&self, code: i32, command: impl Fn() -> Command) -> Samples {
        Samples::collect(self.calls(), 1, || run_expecting(command(), code))
    }
}

/// What PostgreSQL does with a restored file it keeps (`durable_rename` in
/// `KeepFileRestoredFromArchive`): fsync it, rename it to its segment name, fsync it
/// there and its directory. Returns the time taken; the kept file is removed afterwards.
fn keep_restored(restored: &Path, name: &str) -> Duration {
    let dir = restored.parent().unwrap();
    let kept = dir.join(name);
    let start = Instant::now();
    let fsync = |path: &Path| {
        let file = std::fs::OpenOptions::new().read(true).open(path).unwrap();
        file.sync_all().unwrap();
    };
    fsync(restored);
    std::fs::rename(restored, &kept).unwrap();
    fsync(&kept);
    fsync(dir);
    let elapsed = start.elapsed();
    std::fs::remove_file(&kept).unwrap();
    elapsed
}

/// `curl` GETting the segment's object from `server` to /dev/null, signed with SigV4 (with
/// the payload-hash header s3s requires, as wale's GETs send it).
fn curl_get(archive: &Archive, server: &S3Server, segment: &str) -> Command {
    let path = archive.s3_prefix();
    let path = path.trim_start_matches("s3://").trim_end_matches('/');
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-f",
        "-o",
        "/dev/null",
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "-H",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    ])
    .arg("--user")
    .arg(format!("{}:{}", common::ACCESS_KEY, common::SECRET_KEY))
    .arg(format!(
        "http://{}/{path}/wal_005/{segment}.lzo",
        server.addr
    ));
    cmd
}
