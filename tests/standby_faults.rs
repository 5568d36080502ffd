//! A standby made by `wale restore --standby --start` follows a real WAL-E archive
//! (`fixtures/matrix/pg14`) through faults: the store gone for longer than the retry
//! deadline, PostgreSQL killed with SIGKILL, the prefetcher killed again and again, the
//! archive growing one segment at a time while `status` lists it.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::matrix::{Site, Version};

/// The archive as it stood at the restore point, and the segments that come later.
fn first_part(version: &Version) -> (Vec<String>, impl Fn(&str) -> bool) {
    let later = version.words("SEGMENTS_AFTER_RESTORE_POINT");
    let kept = later.clone();
    (later, move |name: &str| !kept.iter().any(|l| l == name))
}

fn caught_up_at_the_end(site: &Site, version: &Version, what: &str) {
    let last = version.meta("LAST_WAL_SEGMENT");
    site.wait_for_status(what, |s| {
        s["caught_up"] == true && s["archive_last_segment"] == last.as_str()
    });
    assert_eq!(site.counted(), version.meta("EXPECTED_AT_END"), "{what}");
}

#[test]
fn a_standby_rides_out_a_store_outage_longer_than_the_retry_deadline() {
    let version = Version::of(14);
    let archive = Archive::empty();
    let server = S3Server::start(&archive.s3_root());
    let port = server.addr.port();
    let mut env = server.env(&archive);
    // Carried into the envdir restore_command reads: each fetch gives up after 2 s.
    env.push(("WALE_RETRY_DEADLINE".into(), "2".into()));
    let (later, keep) = first_part(&version);
    let site = Site::on(&version, keep, archive.root(), env);
    site.restore(&["--standby", "--start"]).expect_code(0);
    site.wait_for_status("caught up before the outage", |s| s["caught_up"] == true);

    drop(server);
    for name in &later {
        site.add_wal(name);
    }
    std::thread::sleep(Duration::from_secs(8));
    let status = site.status();
    assert_eq!(status["running"], true, "{status:#}");
    assert_eq!(status["caught_up"], false, "{status:#}");
    assert!(status["archive_error"].is_string(), "{status:#}");
    assert!(
        status["last_error"].is_string(),
        "wal-fetch's failure is shown: {status:#}"
    );
    assert_eq!(site.query("select 1"), "1", "the standby still answers");

    let _server = S3Server::start_at(&archive.s3_root(), port);
    let back = Instant::now();
    caught_up_at_the_end(&site, &version, "caught up after the outage");
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "caught up {:?} after the store came back",
        back.elapsed()
    );
}

#[test]
fn postgres_killed_with_sigkill_resumes_from_the_archive_with_the_same_command() {
    let version = Version::of(14);
    let (later, keep) = first_part(&version);
    let site = Site::new(&version, keep);
    let args = ["--standby", "--start"];
    site.restore(&args).expect_code(0);
    site.wait_for_status("caught up before the kill", |s| s["caught_up"] == true);

    let pid_file = std::fs::read_to_string(site.pgdata().join("postmaster.pid")).unwrap();
    let pid: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    send_signal(pid, rustix::process::Signal::KILL);
    for name in &later {
        site.add_wal(name);
    }
    // The same command starts it again once its children have gone.
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let run = site.restore(&args);
        if run.code == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the same command did not restart it: {}",
            run.stderr
        );
    }
    caught_up_at_the_end(&site, &version, "caught up after SIGKILL");
}

#[test]
fn the_prefetcher_killed_again_and_again_costs_nothing_but_time() {
    let version = Version::of(14);
    let (later, keep) = first_part(&version);
    let site = Site::new(&version, keep);
    site.restore(&["--standby", "--start"]).expect_code(0);
    site.wait_for_status("caught up first", |s| s["caught_up"] == true);

    let needle = site.pgdata().display().to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, needle) = (stop.clone(), needle.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for pid in prefetchers_for(&needle) {
                    send_signal(pid, rustix::process::Signal::KILL);
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kills
        })
    };
    for name in &later {
        site.add_wal(name);
        std::thread::sleep(Duration::from_millis(200));
    }
    caught_up_at_the_end(&site, &version, "caught up with prefetchers killed");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().unwrap();
    eprintln!("prefetchers killed: {kills}");
}

#[test]
fn segments_appearing_while_status_lists_the_archive_are_all_replayed() {
    let version = Version::of(14);
    let (later, keep) = first_part(&version);
    let site = Site::new(&version, keep);
    site.restore(&["--standby", "--start"]).expect_code(0);
    site.wait_for_status("caught up first", |s| s["caught_up"] == true);
    for name in &later {
        site.add_wal(name);
        // status lists the archive while the segment lands and the standby asks for it.
        let status = site.status();
        assert_eq!(status["running"], true, "{status:#}");
        std::thread::sleep(Duration::from_millis(150));
    }
    caught_up_at_the_end(&site, &version, "caught up with the archive growing");
}
