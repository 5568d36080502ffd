//! `backup-fetch LATEST` of the benchmark archive (`file://`), against what runs in the
//! same conditions in the same run: `pgbackrest restore` of the same cluster (backed up
//! by pgBackRest right after WAL-E, lz4, one process per core, local repository), real
//! WAL-E 1.1.1's `backup-fetch`, and the physical baselines: `lzop -d | tar -x` of the
//! same partitions (in turn, and one pipeline per partition at once), and GNU tar
//! extracting the already-decompressed partitions from the page cache, all at once (the
//! file system's limit). Every baseline ends with a `sync -f`, because wale's restore is
//! durable. Runs are interleaved (one of each tool per round), and everything is flushed
//! between runs, so no run pays for another's writeback. Peak RSS is the largest process
//! of each tool's tree (`ru_maxrss` from `wait4`).
//!
//! Scale: with `WALE_BENCH_SMALL_ARCHIVE` (the quick suite's archive, which the full suite
//! builds too) wale's `backup-fetch` of it is measured as well, and the growth from the
//! small backup to the full one gives the slope projected to 1 TB.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench backup_fetch` (see `support`).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{
    Comparison, PgBackRest, Samples, Suite, common, latest_backup, partitions_of, restored_bytes,
    run, sync_all, wal_e, wal_e_bin,
};

const SECTION: &str = "backup-fetch LATEST, file://";
const WALE: &str = "wale (default pool)";
const WALE_RESTORE: &str = "wale restore (default pool)";
const WAL_E: &str = "WAL-E 1.1.1 (default pool)";
const IN_TURN: &str = "lzop -d | tar -x, partitions in turn";
const AT_ONCE: &str = "lzop -d | tar -x, one per partition at once";
const PLAIN_AT_ONCE: &str = "tar -x of decompressed partitions at once (the limit)";
const SCALE_SECTION: &str = "backup-fetch as the backup grows, file://";

/// One tool of the comparison: its name and the command that restores into a directory.
type Tool<'a> = (String, Box<dyn Fn(&Path) -> Command + 'a>);

fn main() {
    let mut suite = Suite::from_env("backup_fetch");
    let scratch = std::env::var_os("WALE_BENCH_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let archive = suite.archive.clone();
    let backup = latest_backup(&archive);
    let partitions = partitions_of(&archive, &backup);
    let bytes = restored_bytes(&archive, &backup);
    let case = format!(
        "{backup}: {} partitions, {:.2} GB",
        partitions.len(),
        bytes as f64 / 1e9
    );
    let runs = suite.runs(5, 3);
    let directories = directories_of(&partitions);
    let plain = fresh_dir(&scratch);
    let plain_tars = decompress_partitions(&partitions, plain.path());
    let prefix = format!("file://{}", archive.display());
    let pgbackrest = PgBackRest::of_archive(&archive);
    let wal_e_bin = wal_e_bin();

    let mut tools: Vec<Tool> = vec![
        (WALE.into(), Box::new(|t| wale_fetch(&prefix, t))),
        (WALE_RESTORE.into(), Box::new(|t| wale_restore(&prefix, t))),
        (
            "wale --pool-size 1".into(),
            Box::new(|t| {
                let mut cmd = wale_fetch(&prefix, t);
                cmd.args(["--pool-size", "1"]);
                cmd
            }),
        ),
        (IN_TURN.into(), Box::new(|t| lzop_tar(&partitions, None, t))),
        (
            AT_ONCE.into(),
            Box::new(|t| lzop_tar(&partitions, Some(&directories), t)),
        ),
        (
            PLAIN_AT_ONCE.into(),
            Box::new(|t| plain_tar(&plain_tars, &directories, t)),
        ),
    ];
    if let Some(p) = &pgbackrest {
        tools.push((
            format!("{} restore (process-max {})", p.name(), cores()),
            Box::new(|t| {
                let mut cmd = p.command(&["restore"]);
                cmd.arg(format!("--pg1-path={}", t.display()));
                cmd
            }),
        ));
    }
    if let Some(bin) = &wal_e_bin {
        tools.push((
            WAL_E.into(),
            Box::new(|target| {
                let mut cmd = wal_e(bin);
                cmd.env("WALE_FILE_PREFIX", &prefix)
                    .args(["--terse", "backup-fetch"])
                    .arg(target)
                    .arg("LATEST");
                cmd
            }),
        ));
    }
    let samples = interleaved(&tools, runs, &scratch);
    for ((tool, _), samples) in tools.iter().zip(&samples) {
        suite.record((SECTION, &case, tool), samples, Some(bytes), "");
    }
    let compare = |suite: &mut Suite, label: &str, baseline: &str, max: Option<f64>, target| {
        suite.compare(Comparison {
            label,
            section: SECTION,
            case: &case,
            subject: WALE,
            baseline,
            max_ratio: max,
            target,
        })
    };
    if let Some(p) = &pgbackrest {
        let tool = format!("{} restore (process-max {})", p.name(), cores());
        compare(
            &mut suite,
            "backup-fetch vs pgbackrest restore",
            &tool,
            Some(0.5),
            "≤ 0.5× pgBackRest's restore",
        );
        suite.compare(Comparison {
            label: "wale restore vs pgbackrest restore",
            section: SECTION,
            case: &case,
            subject: WALE_RESTORE,
            baseline: &tool,
            max_ratio: Some(0.5),
            target: "≤ 0.5× pgBackRest's restore",
        });
    }
    if wal_e_bin.is_some() {
        compare(
            &mut suite,
            "backup-fetch LATEST vs WAL-E",
            WAL_E,
            Some(1.0 / 3.0),
            "≥ 3× faster than WAL-E",
        );
    }
    compare(
        &mut suite,
        "backup-fetch vs tar -x of decompressed partitions",
        PLAIN_AT_ONCE,
        Some(1.25),
        "≤ 1.25× the file system's limit",
    );
    compare(
        &mut suite,
        "backup-fetch vs lzop | tar at once",
        AT_ONCE,
        Some(1.0),
        "no slower than lzop | tar at once",
    );
    compare(
        &mut suite,
        "backup-fetch vs lzop | tar in turn",
        IN_TURN,
        Some(1.0),
        "no slower than lzop | tar in turn",
    );
    let full = samples[0].clone();
    drop(plain);
    scale(&mut suite, &scratch, (&full, bytes));
    suite.save();
}

/// Runs every tool `runs` times, one run of each per round (the order rotating), each
/// into a fresh directory that is removed, with everything flushed, before the next.
fn interleaved(tools: &[Tool], runs: usize, scratch: &Path) -> Vec<Samples> {
    let mut samples: Vec<Samples> = tools.iter().map(|_| Samples::default()).collect();
    sync_all();
    for round in 0..runs {
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let dir = fresh_dir(scratch);
            common::pg::give_to_postgres(dir.path());
            samples[i].push(run(tools[i].1(&dir.path().join("pgdata"))));
            drop(dir);
            sync_all();
        }
    }
    samples
}

fn wale_fetch(prefix: &str, target: &Path) -> Command {
    let mut cmd = common::wale();
    cmd.env("WALE_FILE_PREFIX", prefix)
        .args(["--terse", "backup-fetch"])
        .arg(target)
        .args(["LATEST", "--blind-restore"]);
    cmd
}

/// `wale restore`: the backup plus the configuration a server needs to recover, owned
/// by `postgres` (what `pgbackrest restore` leaves too).
fn wale_restore(prefix: &str, target: &Path) -> Command {
    let mut cmd = common::wale();
    cmd.env("WALE_FILE_PREFIX", prefix)
        .args(["--terse", "restore"])
        .arg(target)
        .arg("LATEST");
    cmd
}

/// wale's backup-fetch of the small (quick) archive beside the full one: how time and
/// memory grow with the backup, and the time projected to 1 TB from that slope.
fn scale(suite: &mut Suite, scratch: &Path, (full, full_bytes): (&Samples, u64)) {
    let Some(small) = std::env::var_os("WALE_BENCH_SMALL_ARCHIVE").map(PathBuf::from) else {
        println!("WALE_BENCH_SMALL_ARCHIVE not set: no scale rows");
        return;
    };
    let small_backup = latest_backup(&small);
    let small_bytes = restored_bytes(&small, &small_backup);
    let prefix = format!("file://{}", small.display());
    let tools: Vec<Tool> = vec![(WALE.into(), Box::new(|t| wale_fetch(&prefix, t)))];
    let small_samples = interleaved(&tools, suite.runs(5, 3), scratch).remove(0);
    let (t_small, t_full) = (
        small_samples.median().as_secs_f64(),
        full.median().as_secs_f64(),
    );
    let slope = (t_full - t_small) / (full_bytes - small_bytes) as f64;
    let terabyte = t_full + slope * (1e12 - full_bytes as f64);
    let case = "wale backup-fetch LATEST, default pool";
    let small_tool = format!("{:.2} GB backup", small_bytes as f64 / 1e9);
    let full_tool = format!("{:.2} GB backup", full_bytes as f64 / 1e9);
    suite.record(
        (SCALE_SECTION, case, &small_tool),
        &small_samples,
        Some(small_bytes),
        "",
    );
    let note = format!(
        "slope {:.2} s/GB between the two; projected to 1 TB: {:.0} s ({:.1} min)",
        slope * 1e9,
        terabyte,
        terabyte / 60.0
    );
    suite.record(
        (SCALE_SECTION, case, &full_tool),
        full,
        Some(full_bytes),
        &note,
    );
    let growth = full_bytes as f64 / small_bytes as f64;
    suite.compare(Comparison {
        label: &format!(
            "backup-fetch time, {growth:.1}× the data (1 TB: {:.0} min)",
            terabyte / 60.0
        ),
        section: SCALE_SECTION,
        case,
        subject: &full_tool,
        baseline: &small_tool,
        max_ratio: Some(growth * 1.1),
        target: &format!("≤ {:.1}× (linear, +10%)", growth * 1.1),
    });
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The partitions decompressed by the real lzop into `dir` (untimed), then read once so
/// that they are in the page cache.
fn decompress_partitions(partitions: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut tars = Vec::new();
    for partition in partitions {
        let name = partition.file_name().unwrap().to_string_lossy();
        let tar = dir.join(name.trim_end_matches(".lzo"));
        let out = std::fs::File::create(&tar).unwrap();
        let status = Command::new("lzop")
            .args(["-d", "-c"])
            .arg(partition)
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success(), "lzop -d {}", partition.display());
        // Read through, not into memory: a child forked from a large process would report
        // that process's size as its peak RSS.
        let mut file = std::fs::File::open(&tar).unwrap();
        std::io::copy(&mut file, &mut std::io::sink()).unwrap();
        tars.push(tar);
    }
    tars
}

/// The directories the partitions hold (`tar -t`, untimed): GNU tars extracting into one
/// tree at once race on a directory one of them creates as a parent while another
/// extracts it as a member ("Cannot open: No such file or directory", about one run in
/// six), so the parallel baselines create them first, as wale does.
fn directories_of(partitions: &[PathBuf]) -> Vec<String> {
    let mut dirs = Vec::new();
    for partition in partitions {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; lzop -d -c '{}' | tar -t 2>/dev/null",
                partition.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -t of {}", partition.display());
        dirs.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.ends_with('/'))
                .map(|l| l.trim_start_matches('/').to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `lzop -d | tar -x` of every partition into `target`, in turn or all at once (with the
/// directories made first), then `sync -f` of the target's file system.
fn lzop_tar(partitions: &[PathBuf], at_once: Option<&[String]>, target: &Path) -> Command {
    let pipelines: Vec<String> = partitions
        .iter()
        .map(|p| {
            format!(
                "lzop -d -c '{}' | tar -x -C '{}'",
                p.display(),
                target.display()
            )
        })
        .collect();
    match at_once {
        Some(dirs) => all_at_once(&pipelines, dirs, target),
        None => shell(&pipelines.join("; "), target),
    }
}

/// GNU tar extracting the decompressed partitions, one per partition at once.
fn plain_tar(tars: &[PathBuf], dirs: &[String], target: &Path) -> Command {
    let extracts: Vec<String> = tars
        .iter()
        .map(|t| format!("tar -x -f '{}' -C '{}'", t.display(), target.display()))
        .collect();
    all_at_once(&extracts, dirs, target)
}

/// The pipelines started together after `dirs` are made under `target`.
fn all_at_once(pipelines: &[String], dirs: &[String], target: &Path) -> Command {
    let quoted: Vec<String> = dirs
        .iter()
        .map(|d| format!("'{}'", d.replace('\'', "'\\''")))
        .collect();
    let started: Vec<String> = pipelines
        .iter()
        .map(|p| format!("{p} & pids+=($!)"))
        .collect();
    shell(
        &format!(
            "(cd '{}' && mkdir -p -- {}); pids=(); {}; for pid in \"${{pids[@]}}\"; do wait \"$pid\"; done",
            target.display(),
            quoted.join(" "),
            started.join("; ")
        ),
        target,
    )
}

/// `bash -c` of `script` in a new `target`, failing on any failed pipeline, then a
/// `sync -f` of the target's file system.
fn shell(script: &str, target: &Path) -> Command {
    let target = target.display();
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!(
        "set -eo pipefail; mkdir -p '{target}'; {script}; sync -f '{target}'"
    ));
    cmd
}

fn fresh_dir(parent: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wale-bench-")
        .tempdir_in(parent)
        .unwrap()
}
