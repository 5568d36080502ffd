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
        assert_prefetchers_leave(pg_wal.to_str().unwrap(), Some(&pg_wal.join(".wal-e")));
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
        // Kill the prefetcher, and wait until it is dead the way wal-fetch tells: its lock
        // is free. (A killed process leaves /proc's command lines before the kernel has
        // closed its files, so for a moment it still holds the lock; wal-fetch would then
        // rightly wait for its download to grow.)
        let area =
            wale::prefetch::PrefetchDir::for_base(&std::fs::canonicalize(&pg_wal).unwrap(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in prefetchers_for(pg_wal.to_str().unwrap()) {
                send_signal(pid, rustix::process::Signal::KILL);
            }
            if !area.prefetcher_running() {
                break;
            }
            assert!(Instant::now() < deadline, "the prefetcher does not die");
            std::thread::sleep(Duration::from_millis(20));
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
        // A partial download the killed prefetcher left is not waited for: wal-fetch says
        // (at debug) when it waits for the prefetcher, and it must not here.
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.env("RUST_LOG", "debug")
            .args(["wal-fetch", "--prefetch", "8"])
            .arg(name)
            .arg(&dest);
        let run = Run::of(cmd).expect_code(0);
        assert!(
            !run.stderr.contains("waiting for the prefetcher's download"),
            "{name} waited on a dead download:\n{}",
            run.stderr
        );
        assert!(
            std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(name)),
            "{name}"
        );
    }
    assert_prefetchers_leave(pg_wal.to_str().unwrap(), Some(&pg_wal.join(".wal-e")));
}

#[test]
fn a_partial_download_left_by_a_dead_prefetcher_is_neither_waited_for_nor_kept() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let pg_wal = work.path().join("pg_wal");
    let running = pg_wal.join(".wal-e/prefetch/running");
    std::fs::create_dir_all(&running).unwrap();
    let names = segments();
    // What a prefetcher killed mid-download leaves: a partial file and no lock holder.
    let stale = running.join(format!("{}.part", names[0]));
    std::fs::write(&stale, vec![0u8; 4096]).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let started = Instant::now();
    fetch(&archive, None, Backend::File, &names[0], &dest, "4").expect_code(0);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "waited on a dead download"
    );
    assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(&names[0])));
    // The prefetcher that call started clears what its predecessor left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stale.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!stale.exists(), "the stale partial download is still there");
    assert_prefetchers_leave(pg_wal.to_str().unwrap(), Some(&pg_wal.join(".wal-e")));
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

#[test]
fn a_download_under_way_is_waited_for_instead_of_fetched_twice() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let area =
        wale::prefetch::PrefetchDir::for_base(&std::fs::canonicalize(&pg_wal).unwrap(), None);
    area.create().unwrap();
    // This test plays the live prefetcher: it holds the lock and downloads slowly.
    let _lock = area.try_lock().unwrap().expect("lock");
    let name = segments()[1].clone();
    let segment = wale::wal::SegmentName::parse(&name).unwrap();
    let contents = lzop_decompress(&archive.wal_object(&name));
    let (partial, ready) = (area.partial(&segment), area.ready(&segment));
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut file = std::fs::File::create(&partial).unwrap();
        for chunk in contents.chunks(contents.len() / 8) {
            file.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
        std::fs::rename(&partial, &ready).unwrap();
    });
    std::thread::sleep(Duration::from_millis(30));
    let dest = pg_wal.join("RECOVERYXLOG");
    let run = fetch(&archive, None, Backend::File, &name, &dest, "4").expect_code(0);
    writer.join().unwrap();
    assert!(
        run.stderr.contains("from the prefetch area"),
        "fetched again instead of waiting:\n{}",
        run.stderr
    );
    assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(&name)));
}

/// A prefetcher the store refuses backs off per segment (1 s, doubling, capped at 30 s)
/// instead of asking every 20 ms, and the next `wal-fetch` of that segment says why
/// before fetching it itself.
#[test]
fn a_refused_prefetch_backs_off_and_its_reason_reaches_the_next_fetch() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let names = segments();
    let (first, second) = (&names[0], &names[1]);
    for _ in 0..1000 {
        server.inject(&format!("{second}.lzo"), Fault::Status(403, "AccessDenied"));
    }
    let work = tempfile::tempdir().unwrap();
    let pg_wal = work.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
    cmd.env("WALE_PREFETCH_IDLE_SECONDS", "8")
        .args(["wal-fetch", "--prefetch", "1"])
        .arg(first)
        .arg(&dest);
    Run::of(cmd).expect_code(0);
    std::thread::sleep(Duration::from_secs(6));
    let asked = server
        .requests()
        .iter()
        .filter(|r| r.contains(second.as_str()))
        .count();
    // Attempts at 0 s and after pauses of 0.5-1, 1-2 and 2-4 s: at most 4 in 6 s
    // (polling every 20 ms would have made about 300).
    assert!(
        (1..=4).contains(&asked),
        "{asked} requests for {second} in 6 s"
    );

    server.clear_faults();
    let mut cmd = wale_for(&archive, Backend::S3, Some(&server));
    cmd.args(["wal-fetch", "--prefetch", "1"])
        .arg(second)
        .arg(&dest);
    let run = Run::of(cmd).expect_code(0);
    assert!(
        run.stderr
            .contains(&format!("the prefetcher could not fetch {second}"))
            && run.stderr.contains("denied"),
        "{}",
        run.stderr
    );
    assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(second)));
    assert_prefetchers_leave(pg_wal.to_str().unwrap(), Some(&pg_wal.join(".wal-e")));
}
