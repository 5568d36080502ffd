use std::path::Path;

use crate::common::*;

fn fetch(
    archive: &Archive,
    backend: Backend,
    server: Option<&S3Server>,
    name: &str,
    dest: &Path,
) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    cmd.args(["wal-fetch", "--prefetch", "0"])
        .arg(name)
        .arg(dest);
    Run::of(cmd)
}

#[test]
fn every_wal_object_of_the_real_archive_is_byte_identical_to_lzop_on_both_backends() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let names = fixture_wal_names();
    assert!(
        names.len() >= 8,
        "fixture has too few WAL objects: {names:?}"
    );
    let out = tempfile::tempdir().unwrap();
    for backend in BACKENDS {
        for name in &names {
            let dest = out.path().join("RECOVERYXLOG");
            fetch(&archive, backend, Some(&server), name, &dest).expect_code(0);
            let expected = lzop_decompress(&archive.wal_object(name));
            let got = std::fs::read(&dest).unwrap();
            assert!(
                got == expected,
                "{backend:?} {name}: bytes differ from lzop -d"
            );
            std::fs::remove_file(&dest).unwrap();
        }
    }
}

#[test]
fn a_missing_segment_exits_1_on_both_backends_and_leaves_nothing() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    for backend in BACKENDS {
        for name in ["0000000100000000000000FF", "00000002.history"] {
            let dest = out.path().join("RECOVERYXLOG");
            let run = fetch(&archive, backend, Some(&server), name, &dest).expect_code(1);
            assert!(
                run.error_lines().is_empty(),
                "not found is not an error: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(&format!("{name}.lzo: not found")),
                "{}",
                run.stderr
            );
            assert!(!dest.exists());
        }
    }
}

/// Copies a real segment object to a new name with its bytes changed by `damage`.
fn plant(archive: &Archive, name: &str, damage: impl Fn(&mut Vec<u8>)) {
    let source = archive.wal_object(&fixture_meta("BACKUP_START_WAL_SEGMENT"));
    let mut bytes = std::fs::read(source).unwrap();
    damage(&mut bytes);
    std::fs::write(archive.wal_object(name), bytes).unwrap();
}

/// A way of spoiling an object's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn corrupt_truncated_and_foreign_objects_fail_with_one_clear_line_and_leave_nothing() {
    let archive = Archive::fixture_copy();
    let cases: [(&str, &str, Damage); 5] = [
        (
            "0000000100000000000000A1",
            "checksum mismatch|does not decompress",
            Box::new(|b| {
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
            }),
        ),
        (
            "0000000100000000000000A2",
            "truncated lzop stream",
            Box::new(|b| b.truncate(b.len() / 3)),
        ),
        (
            "0000000100000000000000A3",
            "not an lzop stream",
            Box::new(|b| *b = b"hello, not lzop\n".to_vec()),
        ),
        (
            "0000000100000000000000A4",
            "GPG-encrypted",
            Box::new(|b| b.splice(0..0, [0x85u8, 0x01, 0x0c]).for_each(drop)),
        ),
        (
            "0000000100000000000000A5",
            "trailing garbage",
            Box::new(|b| b.extend_from_slice(b"junk")),
        ),
    ];
    for (name, _, damage) in &cases {
        plant(&archive, name, damage);
    }
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    for backend in BACKENDS {
        for (name, message, _) in &cases {
            let dest = out.path().join("RECOVERYXLOG");
            std::fs::write(&dest, "stale file from an earlier call").unwrap();
            let run = fetch(&archive, backend, Some(&server), name, &dest).expect_code(202);
            let errors = run.error_lines();
            assert_eq!(errors.len(), 1, "{backend:?} {name}: {}", run.stderr);
            // The reason first, then what was done about the old file.
            let lines: Vec<&str> = run.stderr.lines().collect();
            let error_at = lines.iter().position(|l| l.contains(": ERROR: "));
            let removed_at = lines.iter().position(|l| l.contains("removed"));
            assert!(
                error_at.is_some() && removed_at > error_at,
                "{backend:?} {name}: {}",
                run.stderr
            );
            let names_reason = message.split('|').any(|m| errors[0].contains(m));
            assert!(
                names_reason && errors[0].contains(&format!("{name}.lzo")),
                "{}",
                errors[0]
            );
            assert!(
                !dest.exists(),
                "{backend:?} {name}: something was left at the destination"
            );
            assert_eq!(
                std::fs::read_dir(out.path()).unwrap().count(),
                0,
                "temporary files left behind"
            );
        }
    }
}

#[test]
fn an_object_that_does_not_decode_to_a_segment_size_is_refused() {
    let archive = Archive::fixture_copy();
    // A valid lzop object of a few bytes stored under a segment name.
    std::fs::write(
        archive.wal_object("0000000100000000000000B1"),
        lzop_compress(b"short", &[]),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let run = fetch(
        &archive,
        Backend::File,
        None,
        "0000000100000000000000B1",
        &dest,
    )
    .expect_code(202);
    assert!(
        run.stderr.contains("not a WAL segment size"),
        "{}",
        run.stderr
    );
    assert!(!dest.exists());
}

#[test]
fn restore_command_runs_through_sh_with_a_relative_destination_and_envdir() {
    let archive = Archive::fixture_copy();
    let pgdata = tempfile::tempdir().unwrap();
    std::fs::create_dir(pgdata.path().join("pg_wal")).unwrap();
    let envdir = pgdata.path().join("wale.env");
    std::fs::create_dir(&envdir).unwrap();
    std::fs::write(
        envdir.join("WALE_FILE_PREFIX"),
        format!("{}\n", archive.file_prefix()),
    )
    .unwrap();
    // The prefetcher this starts must not outlive the test by long.
    std::fs::write(envdir.join("WALE_PREFETCH_IDLE_SECONDS"), "1\n").unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let restore_command = format!(
        "{} --envdir {} wal-fetch \"%f\" \"%p\"",
        env!("CARGO_BIN_EXE_wale"),
        envdir.display()
    )
    .replace("%f", &name)
    .replace("%p", "pg_wal/RECOVERYXLOG");
    // As PostgreSQL runs it: through sh -c, in the data directory, stdin from /dev/null,
    // a minimal environment.
    let mut sh = std::process::Command::new("/bin/sh");
    sh.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(pgdata.path());
    sh.stdin(std::process::Stdio::null());
    sh.arg("-c").arg(&restore_command);
    Run::of(sh).expect_code(0);
    let got = std::fs::read(pgdata.path().join("pg_wal/RECOVERYXLOG")).unwrap();
    assert!(got == lzop_decompress(&archive.wal_object(&name)));
}

/// Usage and configuration errors under wal-fetch exit above 125 (204): with 2,
/// PostgreSQL would read "not available", end archive recovery and promote.
#[test]
fn bad_names_and_configuration_are_usage_errors_that_stop_recovery() {
    let archive = Archive::fixture_copy();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("x");
    let run = fetch(&archive, Backend::File, None, "../../etc/passwd", &dest).expect_code(204);
    assert!(run.stderr.contains("plain file name"), "{}", run.stderr);
    // A cloud prefix without credentials is a configuration error too, never "not found".
    for (var, prefix, needs) in [
        (
            "WALE_GS_PREFIX",
            "gs://bucket/x",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        (
            "WALE_WABS_PREFIX",
            "wabs://container/x",
            "WABS_ACCOUNT_NAME",
        ),
        ("WALE_SWIFT_PREFIX", "swift://container/x", "SWIFT_AUTHURL"),
    ] {
        let mut cmd = wale();
        cmd.env(var, prefix)
            .env("HOME", out.path())
            .args(["wal-fetch", "000000010000000000000003"])
            .arg(&dest);
        let run = Run::of(cmd).expect_code(204);
        assert!(run.stderr.contains(needs), "{}", run.stderr);
    }
    let mut cmd = wale();
    cmd.args(["wal-fetch", "000000010000000000000003"])
        .arg(&dest);
    let run = Run::of(cmd).expect_code(204);
    assert!(run.stderr.contains("no storage prefix"), "{}", run.stderr);
    // Other commands keep 2.
    let mut cmd = wale();
    cmd.args(["backup-list"]);
    Run::of(cmd).expect_code(2);
}

#[test]
fn a_missing_destination_directory_is_a_local_error() {
    let archive = Archive::fixture_copy();
    let dest = archive.dir.path().join("no/such/dir/RECOVERYXLOG");
    let name = fixture_meta("END_WAL_SEGMENT");
    let run = fetch(&archive, Backend::File, None, &name, &dest).expect_code(203);
    assert_eq!(run.error_lines().len(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("no/such/dir"), "{}", run.stderr);
    // With prefetching on (the default) the answer is the same, and nothing is created.
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.arg("wal-fetch").arg(&name).arg(&dest);
    let run = Run::of(cmd).expect_code(203);
    assert!(run.stderr.contains("no/such/dir"), "{}", run.stderr);
    assert!(
        !archive.dir.path().join("no").exists(),
        "a directory was created"
    );
}

#[test]
fn terse_hides_info_and_version_prints_the_version() {
    let archive = Archive::fixture_copy();
    let out = tempfile::tempdir().unwrap();
    let name = fixture_meta("END_WAL_SEGMENT");
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.arg("--terse")
        .arg("wal-fetch")
        .arg(&name)
        .arg(out.path().join("x"));
    let run = Run::of(cmd).expect_code(0);
    assert_eq!(run.stderr, "");
    let mut cmd = wale();
    cmd.arg("version");
    let run = Run::of(cmd).expect_code(0);
    assert_eq!(
        run.stdout_text(),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn history_and_partial_files_are_fetched_like_segments() {
    let archive = Archive::fixture_copy();
    let history = b"1\t0/9000000\tno recovery target specified\n";
    std::fs::write(
        archive.wal_object("00000002.history"),
        lzop_compress(history, &[]),
    )
    .unwrap();
    let segment = fixture_meta("END_WAL_SEGMENT");
    let partial = format!("{segment}.partial");
    std::fs::copy(archive.wal_object(&segment), archive.wal_object(&partial)).unwrap();
    let server = S3Server::start(&archive.s3_root());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYHISTORY");
    for backend in BACKENDS {
        fetch(&archive, backend, Some(&server), "00000002.history", &dest).expect_code(0);
        assert_eq!(std::fs::read(&dest).unwrap(), history);
        fetch(&archive, backend, Some(&server), &partial, &dest).expect_code(0);
        assert!(std::fs::read(&dest).unwrap() == lzop_decompress(&archive.wal_object(&segment)));
    }
}

/// The system calls of one `wal-fetch --prefetch 0` of `name` into `dest`, as strace
/// records them (every thread).
fn syscalls_of_fetch(archive: &Archive, name: &str, dest: &Path) -> String {
    let trace = dest.with_extension("strace");
    let mut cmd = std::process::Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2,linkat",
        "-o",
    ])
    .arg(&trace)
    .arg(env!("CARGO_BIN_EXE_wale"))
    .env("WALE_FILE_PREFIX", archive.file_prefix())
    .args(["--terse", "wal-fetch", "--prefetch", "0", name])
    .arg(dest);
    Run::of(cmd).expect_code(0);
    std::fs::read_to_string(&trace).unwrap()
}

#[test]
fn postgres_scratch_names_are_renamed_into_place_without_fsync_other_names_with() {
    let archive = Archive::fixture_copy();
    let name = fixture_meta("BACKUP_START_WAL_SEGMENT");
    let expected = lzop_decompress(&archive.wal_object(&name));
    let out = tempfile::tempdir().unwrap();
    // PostgreSQL fsyncs what it keeps (durable_rename) and asks again after a crash: the
    // scratch name needs the atomic link, not a wait for the disk.
    let scratch = out.path().join("RECOVERYXLOG");
    let calls = syscalls_of_fetch(&archive, &name, &scratch);
    assert!(calls.contains("linkat("), "no atomic link: {calls}");
    assert!(
        !calls.contains("fsync(") && !calls.contains("fdatasync("),
        "RECOVERYXLOG was fsynced: {calls}"
    );
    assert_eq!(std::fs::read(&scratch).unwrap(), expected);
    // Any other destination is an operator's file: durable before it appears.
    let kept = out.path().join(&name);
    let calls = syscalls_of_fetch(&archive, &name, &kept);
    assert!(
        calls.matches("fsync(").count() >= 2,
        "{name} was not fsynced (file and directory): {calls}"
    );
    assert_eq!(std::fs::read(&kept).unwrap(), expected);
}
