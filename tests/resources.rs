//! Resource faults: a full, read-only or differently mounted destination. They need a
//! small tmpfs, so they run as root (as CI does) and say so when they cannot.

use std::path::Path;

use crate::common::*;

fn only_error_line(run: &Run) -> String {
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    errors[0].to_string()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn a_full_or_read_only_wal_directory_is_a_clear_local_error_leaving_nothing() {
    let archive = Archive::fixture_copy();
    let name = fixture_meta("END_WAL_SEGMENT");
    for (what, size, read_only, reason) in [
        ("full", "1m", false, "No space left"),
        ("read-only", "1m", true, "Read-only"),
    ] {
        let fs = Tmpfs::mount(size, read_only);
        let dest = fs.path.join("RECOVERYXLOG");
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.args(["wal-fetch", "--prefetch", "0"])
            .arg(&name)
            .arg(&dest);
        let run = Run::of(cmd).expect_code(203);
        let line = only_error_line(&run);
        assert!(
            line.contains(reason) && line.contains("RECOVERYXLOG"),
            "{what}: {line}"
        );
        assert!(
            entries(&fs.path).is_empty(),
            "{what}: left {:?}",
            entries(&fs.path)
        );
    }
}

#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn backup_fetch_into_a_full_disk_fails_clearly_and_is_not_startable() {
    let archive = Archive::fixture_copy();
    let fs = Tmpfs::mount("8m", false);
    let target = fs.path.join("pgdata");
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.arg("backup-fetch")
        .arg(&target)
        .args(["LATEST", "--blind-restore"]);
    let run = Run::of(cmd).expect_code(203);
    assert!(
        only_error_line(&run).contains("No space left"),
        "{}",
        run.stderr
    );
    assert!(!target.join("global/pg_control").exists());
    assert!(!run.stderr.contains("restored base_"));
}

#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn a_prefetch_directory_on_another_file_system_still_delivers_and_says_why_it_cannot_help() {
    let archive = Archive::fixture_copy();
    let fs = Tmpfs::mount("256m", false);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("RECOVERYXLOG");
    let names: Vec<String> = fixture_wal_names()
        .into_iter()
        .filter(|n| n.len() == 24)
        .collect();
    let mut warned = false;
    for name in &names[..4] {
        let _ = std::fs::remove_file(&dest);
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.env("WALE_PREFETCH_DIR", &fs.path);
        cmd.args(["wal-fetch", "--prefetch", "4"])
            .arg(name)
            .arg(&dest);
        let run = Run::of(cmd).expect_code(0);
        warned |= run
            .stderr
            .contains("must be on the file system of the WAL directory");
        assert!(
            std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(name)),
            "{name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(
        warned,
        "no warning about the cross-device prefetch directory"
    );
    // The prefetcher leaves before the tmpfs is unmounted.
    assert_prefetchers_leave(&work.path().display().to_string(), None);
}
