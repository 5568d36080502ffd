//! GPG-encrypted archives (`fixtures/wale-gpg`, made by real WAL-E 1.1.1 with
//! `WALE_GPG_KEY_ID`): decrypted in process with an armored key and through the real `gpg`
//! as WAL-E does, on both backends; damage, wrong keys and missing keys fail loudly and
//! publish nothing; a real PostgreSQL recovers from the archive through `wale restore`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::pg::*;
use crate::common::*;

fn gpg_fixture() -> PathBuf {
    repo().join("fixtures/wale-gpg")
}

fn gpg_meta(key: &str) -> String {
    meta_of(&gpg_fixture(), key)
}

fn key_file(name: &str) -> PathBuf {
    gpg_fixture().join(name)
}

fn passphrase() -> String {
    gpg_meta("PASSPHRASE")
}

/// The WAL objects of the fixture (without `.lzo`).
fn gpg_wal_objects() -> Vec<String> {
    std::fs::read_to_string(gpg_fixture().join("wal-segments.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

/// A copy of the encrypted archive, servable over S3 and file://.
fn encrypted_archive() -> Archive {
    let archive = Archive::empty();
    copy_tree(&gpg_fixture().join("archive"), &archive.root());
    archive
}

/// A private GNUPGHOME (short path: gpg-agent's socket lives in it) holding the secret
/// key, removed with its agent when dropped.
struct GnupgHome {
    dir: tempfile::TempDir,
}

impl GnupgHome {
    /// A keyring without the key.
    fn empty() -> GnupgHome {
        let dir = tempfile::Builder::new()
            .prefix("g")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        GnupgHome { dir }
    }

    fn with_key() -> GnupgHome {
        let home = GnupgHome::empty();
        let out = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "-q", "--import"])
            .arg(key_file("secret-key.asc"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The reference: `gpg -d | lzop -d` of one object.
    fn decrypt_and_decompress(&self, object: &Path) -> Vec<u8> {
        let lzo = tempfile::NamedTempFile::new().unwrap();
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.path())
            .args(["-d", "-q", "--batch", "-o"])
            .arg(lzo.path())
            .arg("--yes")
            .arg(object)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        lzop_decompress(lzo.path())
    }
}

impl Drop for GnupgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// Environment variables for one way of giving the key.
type Settings = Vec<(&'static str, String)>;

/// The ways a key can be given to wale, as environment variables.
fn key_settings(gnupg: &GnupgHome) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let armored = std::fs::read_to_string(key_file("secret-key-passphrase.asc")).unwrap();
    vec![
        (
            "WALE_PGP_KEY_PATH",
            vec![(
                "WALE_PGP_KEY_PATH",
                key_file("secret-key.asc").display().to_string(),
            )],
        ),
        (
            "WALG_PGP_KEY + passphrase",
            vec![
                ("WALG_PGP_KEY", armored),
                ("WALG_PGP_KEY_PASSPHRASE", passphrase()),
            ],
        ),
        (
            "WALE_GPG_KEY_ID (gpg -d)",
            vec![
                ("WALE_GPG_KEY_ID", gpg_meta("GPG_KEY_ID")),
                ("GNUPGHOME", gnupg.path().display().to_string()),
            ],
        ),
    ]
}

fn wal_fetch(
    archive: &Archive,
    backend: Backend,
    server: Option<&S3Server>,
    settings: &[(&str, String)],
    name: &str,
    dest: &Path,
    prefetch: bool,
) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    for (k, v) in settings {
        cmd.env(k, v);
    }
    cmd.arg("wal-fetch");
    if !prefetch {
        cmd.args(["--prefetch", "0"]);
    }
    cmd.arg(name).arg(dest);
    Run::of(cmd)
}

#[test]
fn every_object_decrypts_in_process_and_through_gpg_on_both_backends() {
    let archive = encrypted_archive();
    let server = S3Server::start(&archive.s3_root());
    let gnupg = GnupgHome::with_key();
    let out = tempfile::tempdir().unwrap();
    let names = gpg_wal_objects();
    assert_eq!(names.len(), 5);
    for name in &names {
        let expected = gnupg.decrypt_and_decompress(&archive.wal_object(name));
        for backend in BACKENDS {
            for (how, settings) in key_settings(&gnupg) {
                let dest = out.path().join("RECOVERYXLOG");
                let run = wal_fetch(
                    &archive,
                    backend,
                    Some(&server),
                    &settings,
                    name,
                    &dest,
                    false,
                )
                .expect_code(0);
                assert!(
                    std::fs::read(&dest).unwrap() == expected,
                    "{backend:?} {how} {name}: not the bytes gpg and lzop give\n{}",
                    run.stderr
                );
                std::fs::remove_file(&dest).unwrap();
            }
        }
    }
}

#[test]
fn missing_and_wrong_keys_fail_with_one_line_and_leave_nothing() {
    let archive = encrypted_archive();
    let name = gpg_meta("END_WAL_SEGMENT");
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let other_home = GnupgHome::empty();
    let cases: Vec<(&str, Settings, i32, &str)> = vec![
        ("no key", vec![], 202, "WALE_PGP_KEY_PATH"),
        (
            "a locked key without its passphrase",
            vec![(
                "WALE_PGP_KEY_PATH",
                key_file("secret-key-passphrase.asc").display().to_string(),
            )],
            204,
            "WALE_PGP_KEY_PASSPHRASE",
        ),
        (
            "a wrong passphrase",
            vec![
                (
                    "WALE_PGP_KEY_PATH",
                    key_file("secret-key-passphrase.asc").display().to_string(),
                ),
                ("WALE_PGP_KEY_PASSPHRASE", "not-it".into()),
            ],
            204,
            "wrong passphrase",
        ),
        (
            "not an armored key",
            vec![("WALE_PGP_KEY", "hello".into())],
            204,
            "not an armored OpenPGP secret key",
        ),
        (
            "a keyring without the key",
            vec![
                ("WALE_GPG_KEY_ID", String::new()),
                ("GNUPGHOME", other_home.path().display().to_string()),
            ],
            202,
            "No secret key",
        ),
    ];
    for (what, settings, code, says) in cases {
        std::fs::write(&dest, "an older file").unwrap();
        let run = wal_fetch(
            &archive,
            Backend::File,
            None,
            &settings,
            &name,
            &dest,
            false,
        )
        .expect_code(code);
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{what}: {}", run.stderr);
        assert!(
            errors[0].contains(&format!("{name}.lzo")) && errors[0].contains(says),
            "{what}: {}",
            errors[0]
        );
        assert!(!dest.exists(), "{what}: something was left at %p");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "{what}");
    }
}

/// Flips one bit `from_end` bytes before the end of the object (inside the last 16 KB of
/// plaintext, only the integrity code can tell), or cuts it.
fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "flip near the end" => {
            let at = bytes.len() - 200;
            bytes[at] ^= 0x01;
        }
        "flip in the middle" => {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x40;
        }
        "cut" => bytes.truncate(bytes.len() - 30),
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tampered_and_cut_objects_are_corrupt_and_never_published() {
    let gnupg = GnupgHome::with_key();
    let name = gpg_meta("END_WAL_SEGMENT");
    for how in ["flip near the end", "flip in the middle", "cut"] {
        let archive = encrypted_archive();
        damage(&archive.wal_object(&name), how);
        for (key, settings) in key_settings(&gnupg) {
            for prefetch in [false, true] {
                let out = tempfile::tempdir().unwrap();
                let dest = out.path().join("RECOVERYXLOG");
                if prefetch {
                    // The segment before starts a prefetcher, which downloads the damaged
                    // one next: it must not hand it over either.
                    let before = "000000010000000000000004";
                    wal_fetch(
                        &archive,
                        Backend::File,
                        None,
                        &settings,
                        before,
                        &dest,
                        true,
                    )
                    .expect_code(0);
                    std::fs::remove_file(&dest).unwrap();
                    std::thread::sleep(Duration::from_millis(500));
                }
                let run = wal_fetch(
                    &archive,
                    Backend::File,
                    None,
                    &settings,
                    &name,
                    &dest,
                    prefetch,
                )
                .expect_code(202);
                assert!(
                    run.error_lines().len() == 1 && run.stderr.contains(&format!("{name}.lzo")),
                    "{how}, {key}: {}",
                    run.stderr
                );
                assert!(
                    !dest.exists(),
                    "{how}, {key}: an unverified file was published"
                );
                if prefetch {
                    assert_prefetchers_leave(&out.path().display().to_string(), None);
                }
            }
        }
    }
}

fn backup_fetch(archive: &Archive, settings: &[(&str, String)], target: &Path) -> Run {
    let mut cmd = wale_for(archive, Backend::File, None);
    for (k, v) in settings {
        cmd.env(k, v);
    }
    cmd.arg("backup-fetch").arg(target).args(["LATEST"]);
    Run::of(cmd)
}

#[test]
fn backup_fetch_decrypts_partitions_and_refuses_a_tampered_one() {
    let archive = encrypted_archive();
    let gnupg = GnupgHome::with_key();
    let work = tempfile::tempdir().unwrap();
    let mut trees = Vec::new();
    for (i, (how, settings)) in key_settings(&gnupg).into_iter().enumerate() {
        let target = work.path().join(format!("pgdata{i}"));
        backup_fetch(&archive, &settings, &target).expect_code(0);
        assert!(target.join("global/pg_control").is_file(), "{how}");
        trees.push((how, manifest(&target)));
    }
    for (how, tree) in &trees[1..] {
        assert_same_tree(tree, &trees[0].1, how);
    }

    // Damage that only the integrity code at the end reveals: the partition is read to
    // its end, and the restore fails without pg_control.
    let partition = std::fs::read_dir(archive.root().join(format!(
        "basebackups_005/{}/tar_partitions",
        gpg_meta("BACKUP_NAME")
    )))
    .unwrap()
    .next()
    .unwrap()
    .unwrap()
    .path();
    damage(&partition, "flip near the end");
    for (how, settings) in key_settings(&gnupg) {
        let target = work.path().join("tampered");
        let run = backup_fetch(&archive, &settings, &target).expect_code(202);
        assert!(
            run.error_lines().len() == 1 && run.stderr.contains("part_00000000.tar.lzo"),
            "{how}: {}",
            run.stderr
        );
        assert!(
            !target.join("global/pg_control").exists(),
            "{how}: a damaged restore must not be startable"
        );
        let _ = std::fs::remove_dir_all(&target);
    }
}

#[test]
fn a_plain_archive_with_a_key_configured_is_read_with_one_warning() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let settings = [(
        "WALE_PGP_KEY_PATH",
        key_file("secret-key.asc").display().to_string(),
    )];
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.env(settings[0].0, &settings[0].1);
    cmd.arg("backup-fetch")
        .arg(work.path().join("pgdata"))
        .args(["LATEST", "--blind-restore"]);
    let run = Run::of(cmd).expect_code(0);
    assert_eq!(
        run.stderr.matches("is not encrypted").count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn plain_objects_mixed_into_an_encrypted_archive_are_read_as_they_are() {
    let archive = encrypted_archive();
    let gnupg = GnupgHome::with_key();
    let plain = "000000010000000000000004";
    let expected = gnupg.decrypt_and_decompress(&archive.wal_object(plain));
    let out = Command::new("gpg")
        .env("GNUPGHOME", gnupg.path())
        .args(["-d", "-q", "--batch"])
        .arg(archive.wal_object(plain))
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(archive.wal_object(plain), &out.stdout).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (how, settings) in key_settings(&gnupg) {
        for name in gpg_wal_objects() {
            let dest = work.path().join("RECOVERYXLOG");
            let run = wal_fetch(
                &archive,
                Backend::File,
                None,
                &settings,
                &name,
                &dest,
                false,
            )
            .expect_code(0);
            assert_eq!(
                run.stderr.contains("is not encrypted"),
                name == plain,
                "{how} {name}: {}",
                run.stderr
            );
            if name == plain {
                assert!(std::fs::read(&dest).unwrap() == expected, "{how}");
            }
            std::fs::remove_file(&dest).unwrap();
        }
    }
}

#[test]
fn keys_and_passphrases_never_reach_the_logs() {
    let archive = encrypted_archive();
    let name = gpg_meta("END_WAL_SEGMENT");
    let out = tempfile::tempdir().unwrap();
    let armored = std::fs::read_to_string(key_file("secret-key-passphrase.asc")).unwrap();
    // A line from the middle of the key's base64.
    let key_line = armored
        .lines()
        .filter(|l| l.len() > 40 && !l.contains(' '))
        .nth(3)
        .unwrap()
        .to_string();
    for (level, pass) in [
        ("info", passphrase()),
        ("trace", passphrase()),
        ("trace", "wRoNg-PaSs".into()),
    ] {
        let settings = [
            ("WALE_PGP_KEY", armored.clone()),
            ("WALE_PGP_KEY_PASSPHRASE", pass.clone()),
        ];
        let mut cmd = wale_for(&archive, Backend::File, None);
        cmd.env("RUST_LOG", level);
        for (k, v) in &settings {
            cmd.env(k, v);
        }
        cmd.args(["wal-fetch", "--prefetch", "0"])
            .arg(&name)
            .arg(out.path().join("x"));
        let run = Run::of(cmd);
        for text in [&run.stderr, &run.stdout_text()] {
            assert!(!text.contains(&pass), "the passphrase appeared at {level}");
            assert!(
                !text.contains(&key_line),
                "key material appeared at {level}"
            );
        }
    }
}

/// How a recovery test gives wale the key.
enum KeyGiven {
    /// The armored passphrase-protected key inline (it reaches `restore_command` through
    /// the envdir restore writes, newlines as NULs), with a `gpg` on `PATH` that fails
    /// and leaves a mark if anything runs it.
    Inline,
    /// A GnuPG home owned by the server's user, as WAL-E used it.
    GnupgHome,
}

/// From the encrypted archive to a running server: `wale restore --start`, real
/// PostgreSQL recovery to the end of the archive through `wale wal-fetch`, the source's
/// data.
fn recover_through_wale_restore(key: KeyGiven) {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = work.path().join("archive");
    copy_tree(&gpg_fixture().join("archive"), &archive);
    let sock = work.path().join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    give_to_postgres(&sock);
    let pgdata = work.path().join("pgdata");
    // Below the kernel's ephemeral ports (32768 on), which loopback clients take.
    let port = free_port();
    let mut cmd = wale();
    cmd.env("WALE_FILE_PREFIX", format!("file://{}", archive.display()));
    let shim = work.path().join("shim");
    let gpg_ran = work.path().join("gpg-ran");
    let home = tempfile::Builder::new()
        .prefix("g")
        .tempdir_in("/tmp")
        .unwrap();
    match key {
        KeyGiven::Inline => {
            std::fs::create_dir(&shim).unwrap();
            std::fs::write(
                shim.join("gpg"),
                format!("#!/bin/sh\ntouch {}\nexit 2\n", gpg_ran.display()),
            )
            .unwrap();
            std::fs::set_permissions(shim.join("gpg"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", shim.display()))
                .env(
                    "WALE_PGP_KEY",
                    std::fs::read_to_string(key_file("secret-key-passphrase.asc")).unwrap(),
                )
                .env("WALE_PGP_KEY_PASSPHRASE", passphrase());
        }
        KeyGiven::GnupgHome => {
            std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            give_to_postgres(home.path());
            let mut import = as_postgres(Path::new("/usr/bin/gpg"));
            import
                .env("GNUPGHOME", home.path())
                .args(["--batch", "-q", "--import"])
                .arg(key_file("secret-key.asc"));
            run_ok(import, "gpg --import");
            // The agent is stopped: the first gpg to run starts it, as root here.
            let mut kill = as_postgres(Path::new("/usr/bin/gpgconf"));
            kill.env("GNUPGHOME", home.path())
                .args(["--kill", "gpg-agent"]);
            run_ok(kill, "gpgconf --kill");
            cmd.env("WALE_GPG_KEY_ID", gpg_meta("GPG_KEY_ID"))
                .env("GNUPGHOME", home.path());
        }
    }
    cmd.arg("restore")
        .arg(&pgdata)
        .args(["LATEST", "--start", "--port", &port.to_string(), "--set"])
        .arg(format!("unix_socket_directories={}", sock.display()));
    let run = Run::of(cmd);
    let stop = || {
        let mut stop = as_postgres(&pg_bin().join("pg_ctl"));
        stop.arg("-D")
            .arg(&pgdata)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.output();
        let mut kill = as_postgres(Path::new("/usr/bin/gpgconf"));
        kill.env("GNUPGHOME", home.path())
            .args(["--kill", "gpg-agent"]);
        let _ = kill.output();
    };
    let log = || std::fs::read_to_string(pgdata.join("log/postgresql.log")).unwrap_or_default();
    if run.code != 0 {
        let text = log();
        stop();
        panic!("restore failed: {}\nlog:\n{text}", run.stderr);
    }
    let psql = |args: &[&str]| {
        let mut cmd = as_postgres(&pg_bin().join("psql"));
        cmd.args(["-X", "-q", "-h"]).arg(&sock);
        cmd.args(["-p", &port.to_string(), "-d", "postgres"])
            .args(args);
        run_ok(cmd, "psql")
    };
    let started = Instant::now();
    while psql(&["-A", "-t", "-c", "select pg_is_in_recovery()"]).trim() != "f" {
        if started.elapsed() > Duration::from_secs(120) {
            let text = log();
            stop();
            panic!("recovery did not end; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let checks = work.path().join("checks.sql");
    std::fs::copy(gpg_fixture().join("checks.sql"), &checks).unwrap();
    std::fs::set_permissions(&checks, std::fs::Permissions::from_mode(0o644)).unwrap();
    let got = psql(&["-f", checks.to_str().unwrap()]);
    let text = log();
    stop();
    assert_eq!(
        got,
        std::fs::read_to_string(gpg_fixture().join("expected.txt")).unwrap(),
        "log:\n{text}"
    );
    // `restore` recovers to the end through wale's WAL stream, which decrypts as
    // restore_command does: the last segment came one way or the other.
    assert!(
        text.contains("started streaming WAL from primary")
            || text.contains(&format!(
                "restored log file \"{}\"",
                gpg_meta("END_WAL_SEGMENT")
            )),
        "{text}"
    );
    assert!(!gpg_ran.exists(), "the in-process path ran gpg");
}

#[test]
#[cfg_attr(not(wale_tests_as_root), ignore)]
fn postgres_recovers_an_encrypted_archive_decrypted_in_process() {
    recover_through_wale_restore(KeyGiven::Inline);
}

#[test]
#[cfg_attr(not(wale_tests_as_root), ignore)]
fn postgres_recovers_an_encrypted_archive_decrypted_by_gpg_from_the_owners_keyring() {
    recover_through_wale_restore(KeyGiven::GnupgHome);
}
