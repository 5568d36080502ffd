use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

fn fetch(
    archive: &Archive,
    server: Option<&S3Server>,
    backend: Backend,
    name: &str,
    dest: &Path,
    window: &str,
) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    cmd.args(["wal-fetch", "--prefetch", window])
        .arg(name)
        .arg(dest);
    Run::of(cmd)
}

/// The fixture's segments from the backup's start to the end, in order.
fn segments() -> Vec<String> {
    let start = fixture_meta("BACKUP_START_WAL_SEGMENT");
    fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24 && *n >= start)
        .collect()
}

fn wait_until_gone(area: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (area.exists() || !prefetchers_for(needle).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!area.exists(), "{} outlived the prefetcher", area.display());
    assert!(
        prefetchers_for(needle).is_empty(),
        "a prefetcher is still running"
    );
}

#[test]
fn recovery_order_fetches_are_served_by_the_prefetcher_on_both_backends() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    for backend in BACKENDS {
        let work = tempfile::tempdir().unwrap();
        let pg_wal = work.path().join("pg_wal");
        std::fs::create_dir(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let mut hits = 0;
        for name in segments() {
            let run = fetch(&archive, Some(&server), backend, &name, &dest, "4").expect_code(0);
            hits += usize::from(run.stderr.contains("from the prefetch area"));
            assert!(
                std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(&name)),
                "{backend:?} {name}"
            );
            std::fs::remove_file(&dest).unwrap();
            // PostgreSQL replays a segment before asking for the next.
            std::thread::sleep(Duration::from_millis(150));
        }
        // Under CI load the prefetcher may lag; most calls must still be hits.
        assert!(
            hits * 2 >= segments().len(),
            "{backend:?}: only {hits} prefetch hits"
        );
        // A history probe (404) in between does not wipe the prefetched segments.
        fetch(
            &archive,
            Some(&server),
            backend,
            "00000002.history",
            &work.path().join("h"),
            "4",
        )
        .expect_code(1);
        fetch(
            &archive,
            Some(&server),
            backend,
            "0000000100000000000000FF",
            &dest,
            "4",
        )
        .expect_code(1);
        wait_until_gone(&pg_wal.join(".wal-e"), pg_wal.to_str().unwrap());
    }
}

#[test]
fn killing_the_prefetcher_never_exposes_a_partial_segment() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let names = segments();
    fetch(&archive, None, Backend::File, &names[0], &dest, "8").expect_code(0);
    // Kill the prefetcher while it works, twice over the sequence.
    for name in &names[1..] {
        for pid in prefetchers_for(pg_wal.to_str().unwrap()) {
            // SAFETY: sending a signal has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // Whatever stands under a segment's name in the area must be whole and sound.
        let area = pg_wal.join(".wal-e/prefetch");
        for entry in std::fs::read_dir(&area)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(segment) = wale::wal::SegmentName::parse(&file_name) {
                wale::prefetch::check_segment_file(&entry.path(), &segment).unwrap();
            }
        }
        fetch(&archive, None, Backend::File, name, &dest, "8").expect_code(0);
        assert!(
            std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(name)),
            "{name}"
        );
    }
    wait_until_gone(&pg_wal.join(".wal-e"), pg_wal.to_str().unwrap());
}

#[test]
fn killing_wal_fetch_leaves_nothing_at_the_destination() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let name = fixture_meta("END_WAL_SEGMENT");
    for _ in 0..5 {
        server.inject(&name, Fault::Status(503, "SlowDown"));
    }
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("RECOVERYXLOG");
    let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
    cmd.args(["wal-fetch", "--prefetch", "0"])
        .arg(&name)
        .arg(&dest);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
