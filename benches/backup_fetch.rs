//! `backup-fetch LATEST` of the benchmark archive (`file://`), against what runs in the
//! same conditions in the same run: real WAL-E 1.1.1's `backup-fetch`, and the physical
//! baseline `lzop -d | tar -x` of the same partitions, one after another and all at once
//! (one pipeline per partition), each followed by a `sync -f` because wale's restore is
//! durable. Everything is flushed between runs, so no run pays for another's writeback.
//! Peak RSS is the largest process of each tool's tree (`ru_maxrss` from `wait4`).
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench backup_fetch` (see `support`).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{
    Comparison, Samples, Suite, common, latest_backup, partitions_of, restored_bytes, run,
    sync_all, wal_e, wal_e_bin,
};

const SECTION: &str = "backup-fetch LATEST, file://";
const WALE: &str = "wale (default pool)";
const WAL_E: &str = "WAL-E 1.1.1 (default pool)";
const IN_TURN: &str = "lzop -d | tar -x, partitions in turn";
const AT_ONCE: &str = "lzop -d | tar -x, one per partition at once";

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
    let runs = suite.runs(3, 3);
    let directories = directories_of(&partitions);
    let measure = |command: &dyn Fn(&Path) -> Command| {
        sync_all();
        Samples::collect(runs, 0, || {
            let dir = fresh_dir(&scratch);
            let sample = run(command(&dir.path().join("pgdata")));
            drop(dir);
            sync_all();
            sample
        })
    };
    let prefix = format!("file://{}", archive.display());
    let wale_cmd = |extra: &'static [&'static str]| {
        let prefix = prefix.clone();
        move |target: &Path| {
            let mut cmd = common::wale();
            cmd.env("WALE_FILE_PREFIX", &prefix)
                .args(["--terse", "backup-fetch"])
                .arg(target)
                .args(["LATEST", "--blind-restore"])
                .args(extra);
            cmd
        }
    };
    let rows: Vec<(&str, Samples)> = vec![
        (WALE, measure(&wale_cmd(&[]))),
        (
            "wale --pool-size 1",
            measure(&wale_cmd(&["--pool-size", "1"])),
        ),
        (IN_TURN, measure(&|t| lzop_tar(&partitions, None, t))),
        (
            AT_ONCE,
            measure(&|t| lzop_tar(&partitions, Some(&directories), t)),
        ),
    ];
    for (tool, samples) in &rows {
        suite.record((SECTION, &case, tool), samples, Some(bytes), "");
    }
    if let Some(bin) = wal_e_bin() {
        let e = measure(&|target| {
            let mut cmd = wal_e(&bin);
            cmd.env("WALE_FILE_PREFIX", &prefix)
                .args(["--terse", "backup-fetch"])
                .arg(target)
                .arg("LATEST");
            cmd
        });
        suite.record((SECTION, &case, WAL_E), &e, Some(bytes), "");
        suite.compare(Comparison {
            label: "backup-fetch LATEST vs WAL-E",
            section: SECTION,
            case: &case,
            subject: WALE,
            baseline: WAL_E,
            max_ratio: Some(1.0 / 3.0),
            target: "≥ 3× faster than WAL-E",
        });
    }
    for (baseline, label) in [
        (IN_TURN, "backup-fetch vs lzop | tar in turn"),
        (AT_ONCE, "backup-fetch vs lzop | tar at once"),
    ] {
        suite.compare(Comparison {
            label,
            section: SECTION,
            case: &case,
            subject: WALE,
            baseline,
            max_ratio: None,
            target: "(physical baseline)",
        });
    }
    suite.save();
}

/// `lzop -d | tar -x` of every partition into `target`, in turn or all at once, then
/// `sync -f` of the target's file system.
/// The directories the partitions hold (`tar -t`, untimed): GNU tars extracting into one
/// tree at once race on a directory one of them creates as a parent while another
/// extracts it as a member ("Cannot open: No such file or directory", about one run in
/// six), so the parallel baseline creates them first, as wale does.
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

fn lzop_tar(partitions: &[PathBuf], at_once: Option<&[String]>, target: &Path) -> Command {
    let target = target.display();
    let pipelines: Vec<String> = partitions
        .iter()
        .map(|p| format!("lzop -d -c '{}' | tar -x -C '{target}'", p.display()))
        .collect();
    let run_all = if let Some(dirs) = at_once {
        let quoted: Vec<String> = dirs
            .iter()
            .map(|d| format!("'{}'", d.replace('\'', "'\\''")))
            .collect();
        let started: Vec<String> = pipelines
            .iter()
            .map(|p| format!("{p} & pids+=($!)"))
            .collect();
        format!(
            "(cd '{target}' && mkdir -p -- {}); pids=(); {}; for pid in \"${{pids[@]}}\"; do wait \"$pid\"; done",
            quoted.join(" "),
            started.join("; ")
        )
    } else {
        pipelines.join("; ")
    };
    let script = format!("set -eo pipefail; mkdir -p '{target}'; {run_all}; sync -f '{target}'");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script);
    cmd
}

fn fresh_dir(parent: &Path) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wale-bench-")
        .tempdir_in(parent)
        .unwrap()
}
