//! `wale verify` against what it stands in for, in the same run:
//! * `verify --backup-only` of the benchmark archive's latest backup (every partition
//!   read through, nothing written) against `backup-fetch` of the same backup;
//! * `verify --wal-only` of an archive holding 10⁴ and 10⁵ WAL objects (empty objects but
//!   the first: only the listing is measured), for its time and peak RSS as the archive grows.
//!
//! Run by `scripts/bench.sh`, or `cargo bench --bench verify` (see `support`).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use support::{Comparison, Samples, Suite, common, latest_backup, restored_bytes, run, sync_all};

const BACKUP_SECTION: &str = "verify a backup, file://";
const LISTING_SECTION: &str = "verify --wal-only, file://";
const VERIFY: &str = "wale verify --backup-only";
const FETCH: &str = "wale backup-fetch";

fn main() {
    let mut suite = Suite::from_env("verify");
    let scratch = tempfile::Builder::new()
        .prefix("wale-bench-verify-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let archive = suite.archive.clone();
    let backup = latest_backup(&archive);
    let bytes = restored_bytes(&archive, &backup);
    let case = format!("{backup}, {:.2} GB", bytes as f64 / 1e9);
    let prefix = format!("file://{}", archive.display());
    let runs = suite.runs(3, 2);
    let wale = |prefix: &str| {
        let mut cmd = common::wale();
        cmd.env("WALE_FILE_PREFIX", prefix).arg("--terse");
        cmd
    };
    let verify = Samples::collect(runs, 0, || {
        let mut cmd = wale(&prefix);
        cmd.args(["verify", "--backup-only", "LATEST"]);
        run(cmd)
    });
    suite.record((BACKUP_SECTION, &case, VERIFY), &verify, Some(bytes), "");
    sync_all();
    let fetch = Samples::collect(runs, 0, || {
        let dir = tempfile::tempdir_in(scratch.path()).unwrap();
        let mut cmd = wale(&prefix);
        cmd.arg("backup-fetch")
            .arg(dir.path().join("pgdata"))
            .args(["LATEST", "--blind-restore"]);
        let sample = run(cmd);
        drop(dir);
        sync_all();
        sample
    });
    suite.record((BACKUP_SECTION, &case, FETCH), &fetch, Some(bytes), "");
    suite.compare(Comparison {
        label: "verify a backup vs backup-fetch of it",
        section: BACKUP_SECTION,
        case: &case,
        subject: VERIFY,
        baseline: FETCH,
        max_ratio: Some(1.0),
        target: "no slower than backup-fetch",
    });

    let listing_case = "archive listing, empty WAL objects";
    let listing_tool = |count: u64| format!("wale verify --wal-only, {count} objects");
    for count in [10_000u64, 100_000] {
        let listed = scratch.path().join(format!("listing-{count}"));
        many_segments(&archive, &backup, &listed, count);
        let prefix = format!("file://{}", listed.display());
        let samples = Samples::collect(suite.runs(3, 2), 1, || {
            let mut cmd = wale(&prefix);
            cmd.args(["verify", "--wal-only", "LATEST"]);
            run(cmd)
        });
        let tool = listing_tool(count);
        suite.record((LISTING_SECTION, listing_case, &tool), &samples, None, "");
    }
    suite.compare(Comparison {
        label: "verify --wal-only of 10⁵ WAL objects vs 10⁴",
        section: LISTING_SECTION,
        case: listing_case,
        subject: &listing_tool(100_000),
        baseline: &listing_tool(10_000),
        max_ratio: Some(15.0),
        target: "grows linearly (≤ 15× for 10× the objects)",
    });
    suite.save();
}

/// An archive with `backup`'s sentinel and `count` segment objects from its start segment
/// on, contiguous: what `--wal-only` lists. All but the start segment (whose first page
/// verify reads) are empty.
fn many_segments(archive: &Path, backup: &str, into: &Path, count: u64) {
    let sentinel = format!("basebackups_005/{backup}_backup_stop_sentinel.json");
    std::fs::create_dir_all(into.join("basebackups_005")).unwrap();
    std::fs::copy(archive.join(&sentinel), into.join(&sentinel)).unwrap();
    let wal = into.join("wal_005");
    std::fs::create_dir_all(&wal).unwrap();
    let start = &backup["base_".len().."base_".len() + 24];
    let timeline = &start[..8];
    let first = u64::from_str_radix(&start[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&start[16..24], 16).unwrap();
    for number in first..first + count {
        let name = format!("{timeline}{:08X}{:08X}.lzo", number / 256, number % 256);
        if number == first {
            // verify reads the segment size from the start segment's first page.
            std::fs::copy(archive.join("wal_005").join(&name), wal.join(name)).unwrap();
        } else {
            std::fs::File::create(wal.join(name)).unwrap();
        }
    }
    assert!(Command::new("sync").status().unwrap().success());
}
