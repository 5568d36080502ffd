//! An operator's first day (issue 25): envdir secrets others can read, `file://` URLs
//! with a host, `status` on what is not a data directory, all in one line each.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

/// An envdir for the fixture archive holding a secret and a non-secret, with `mode`.
fn envdir_with(archive: &Archive, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("WALE_FILE_PREFIX", archive.file_prefix()),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "not-the-secret-to-print".to_string(),
        ),
        ("SWIFT_PASSWORD", "nor-this-one".to_string()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

#[test]
fn envdir_secrets_others_can_read_get_one_warning() {
    let archive = Archive::fixture_copy();
    let open = envdir_with(&archive, 0o644);
    let mut cmd = wale();
    cmd.arg("--envdir").arg(open.path()).arg("backup-list");
    let run = Run::of(cmd).expect_code(0);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(": WARN: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    let warning = warnings[0];
    for secret in ["AWS_SECRET_ACCESS_KEY", "SWIFT_PASSWORD"] {
        assert!(
            warning.contains(&format!("{}/{secret} (mode 0644)", open.path().display())),
            "{warning}"
        );
    }
    assert!(
        !warning.contains("AWS_ACCESS_KEY_ID") && warning.contains("chmod 600"),
        "{warning}"
    );
    assert!(
        !run.stderr.contains("not-the-secret"),
        "a secret was printed"
    );

    // Private files: nothing to say, also under restore_command's --terse.
    let private = envdir_with(&archive, 0o600);
    let mut cmd = wale();
    cmd.arg("--envdir").arg(private.path()).arg("backup-list");
    let run = Run::of(cmd).expect_code(0);
    assert!(!run.stderr.contains("WARN"), "{}", run.stderr);
    // Group-readable is readable by others than the owner too.
    let group = envdir_with(&archive, 0o640);
    let mut cmd = wale();
    cmd.args(["--terse", "--envdir"])
        .arg(group.path())
        .arg("backup-list");
    let run = Run::of(cmd).expect_code(0);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("(mode 0640)"), "{}", run.stderr);
}

#[test]
fn a_file_url_with_a_host_is_refused_with_what_was_meant() {
    let work = tempfile::tempdir().unwrap();
    let mut list = wale();
    list.current_dir(work.path()).args([
        "--file-prefix",
        "file://fixtures/wale-small",
        "backup-list",
    ]);
    let run = Run::of(list).expect_code(2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let line = run.error_lines()[0];
    assert!(
        line.contains("\"fixtures\" would be a host name")
            && line.contains("file:///fixtures/wale-small for the absolute path")
            && line.contains(&format!(
                "file://{}/fixtures/wale-small",
                work.path().canonicalize().unwrap().display()
            )),
        "{line}"
    );
    // Under wal-fetch a configuration error stays above 125.
    let mut fetch = wale();
    fetch
        .current_dir(work.path())
        .env("WALE_FILE_PREFIX", "file://fixtures/wale-small")
        .args(["wal-fetch", "000000010000000000000002"])
        .arg(work.path().join("RECOVERYXLOG"));
    Run::of(fetch).expect_code(204);
    // localhost is the one host a file:// URL may name.
    let archive = Archive::fixture_copy();
    let mut list = wale();
    list.arg("--file-prefix")
        .arg(
            archive
                .file_prefix()
                .replacen("file://", "file://localhost", 1),
        )
        .arg("backup-list");
    Run::of(list).expect_code(0);
}

#[test]
fn status_on_what_is_not_a_data_directory_exits_6_in_one_line() {
    let work = tempfile::tempdir().unwrap();
    // No configuration at all: the directory is looked at first.
    for (dir, says) in [
        (work.path().join("missing"), "no such directory"),
        (work.path().to_path_buf(), "not a PostgreSQL data directory"),
    ] {
        for format in [&[][..], &["--json"], &["--format", "prometheus"]] {
            let mut cmd = wale();
            cmd.arg("status").arg(&dir).args(format);
            let run = Run::of(cmd).expect_code(6);
            assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
            assert!(
                run.error_lines()[0].contains(&format!("{}: {says}", dir.display())),
                "{}",
                run.stderr
            );
            assert!(run.stdout.is_empty(), "{}", run.stdout_text());
        }
    }
}
