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
        ("full", "1m", false, "no space left"),
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
        only_error_line(&run).contains("no space left"),
        "{}",
        run.stderr
    );
    assert!(!target.join("global/pg_control").exists());
    assert!(!run.stderr.contains("restored base_"));

    // Once there is room, the same command completes what it started.
    fs.resize("256m");
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.arg("backup-fetch")
        .arg(&target)
        .args(["LATEST", "--blind-restore"]);
    Run::of(cmd).expect_code(0);
    assert!(target.join("global/pg_control").is_file());
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

impl Tmpfs {
    /// Gives the tmpfs a new size (as freeing space would).
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A disk that fills during `restore` (the sentinel understated the backup, or something
/// else wrote there): one line naming the path, what is free and what the backup needs;
/// nothing left; once there is room, the same command succeeds.
#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn a_disk_that_fills_during_restore_is_one_line_nothing_left_then_the_same_command_works() {
    let archive = Archive::fixture_copy();
    let sentinel = archive.root().join(format!(
        "basebackups_005/{}_backup_stop_sentinel.json",
        fixture_meta("BACKUP_NAME")
    ));
    let text = std::fs::read_to_string(&sentinel).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let planned = json["expanded_size_bytes"].as_u64().unwrap();
    let understated = text.replace(&planned.to_string(), "1000000");
    std::fs::write(&sentinel, understated).unwrap();

    let fs = Tmpfs::mount("24m", false);
    let pgdata = fs.path.join("main");
    let restore = || {
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.arg("restore").arg(&pgdata);
        cmd
    };
    let run = Run::of(restore()).expect_code(203);
    let line = only_error_line(&run);
    assert!(
        line.contains("no space left")
            && line.contains("free")
            && line.contains(&fs.path.display().to_string()),
        "{line}"
    );
    assert!(entries(&fs.path).is_empty(), "left {:?}", entries(&fs.path));

    fs.resize("256m");
    Run::of(restore()).expect_code(0);
    assert!(pgdata.join("global/pg_control").is_file());
}

/// A standby's `wal-fetch` into a full `pg_wal`: one line with what a segment needs, exit
/// 75 (PostgreSQL asks again; never 1, "not in the archive"), nothing left; then it works.
#[test]
#[cfg_attr(not(wale_tests_as_root), ignore = "needs root to mount a tmpfs")]
fn a_standby_wal_fetch_into_a_full_disk_asks_to_be_retried_then_works() {
    let archive = Archive::fixture_copy();
    let fs = Tmpfs::mount("4m", false);
    // A standby's data directory, as PostgreSQL runs restore_command in it.
    std::fs::write(fs.path.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(fs.path.join("standby.signal"), "").unwrap();
    std::fs::create_dir(fs.path.join("pg_wal")).unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let fetch = || {
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.current_dir(&fs.path);
        cmd.args(["wal-fetch", "--prefetch", "0"])
            .arg(&name)
            .arg("pg_wal/RECOVERYXLOG");
        cmd
    };
    let run = Run::of(fetch()).expect_code(75);
    let line = only_error_line(&run);
    assert!(
        line.contains("no space left") && line.contains("16.0 MiB needed"),
        "{line}"
    );
    assert!(
        entries(&fs.path.join("pg_wal"))
            .iter()
            .all(|e| e.starts_with('.'))
    );
    assert!(!fs.path.join("pg_wal/RECOVERYXLOG").exists());

    fs.resize("64m");
    Run::of(fetch()).expect_code(0);
    assert_eq!(
        std::fs::read(fs.path.join("pg_wal/RECOVERYXLOG")).unwrap(),
        lzop_decompress(&archive.wal_object(&name))
    );
}
