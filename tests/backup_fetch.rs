use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn backup_fetch(
    archive: &Archive,
    backend: Backend,
    server: Option<&S3Server>,
    target: &Path,
    args: &[&str],
) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    cmd.arg("backup-fetch").arg(target).args(args);
    Run::of(cmd)
}

#[test]
fn the_restored_tree_is_the_one_wal_e_restores_on_both_backends() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let expected = wal_e_restore_manifest();
    assert!(
        expected.len() > 12_000,
        "the fixture should have several partitions"
    );
    for backend in BACKENDS {
        let work = tempfile::tempdir().unwrap();
        let target = work.path().join("pgdata");
        let run = backup_fetch(
            &archive,
            backend,
            Some(&server),
            &target,
            &["LATEST", "--blind-restore"],
        )
        .expect_code(0);
        assert!(run.stderr.contains("restored base_"), "{}", run.stderr);
        // A blind restore leaves the tablespace in place, which PostgreSQL 15 refuses at
        // start-up unless told: the restore says so.
        assert!(
            run.stderr.contains(&format!(
                "pg_tblspc/{} restored as directories",
                fixture_meta("TABLESPACE_OID")
            )) && run.stderr.contains("allow_in_place_tablespaces = on"),
            "{}",
            run.stderr
        );
        assert_same_tree(&manifest(&target), &expected, &format!("{backend:?}"));
        // As root, owners come from the archive's names (postgres), as WAL-E's tarfile did.
        if wale::users::effective_uid() == 0 {
            use std::os::unix::fs::MetadataExt;
            let postgres = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8_lossy(&postgres.stdout)
                .trim()
                .parse()
                .unwrap();
            for path in ["PG_VERSION", "base", "wale-fixture-symlink.txt"] {
                let meta = std::fs::symlink_metadata(target.join(path)).unwrap();
                assert_eq!(meta.uid(), uid, "{backend:?}: owner of {path}");
            }
        }
    }
}

#[test]
fn tablespaces_need_links_unless_mapped_or_blind() {
    let archive = Archive::fixture_copy();
    let oid = fixture_meta("TABLESPACE_OID");
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    let run = backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]).expect_code(2);
    assert!(
        run.stderr.contains(&oid) && run.stderr.contains("--tablespace"),
        "{}",
        run.stderr
    );
    assert_eq!(run.error_lines().len(), 1, "one line: {}", run.stderr);
    assert!(
        !target.exists(),
        "the refused run left the directory it created"
    );
    let unknown = backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--tablespace", "99=/srv/x"],
    )
    .expect_code(2);
    assert!(
        unknown.stderr.contains("--tablespace 99=/srv/x")
            && unknown.stderr.contains(&format!("its tablespaces: {oid}")),
        "{}",
        unknown.stderr
    );
    assert!(!target.exists(), "the refused run left its directory");
    // Mapped: files land in the chosen directory, reached through pg_tblspc/<oid>, its
    // missing parents created on the way.
    let location = work.path().join("volumes/ts-here");
    let mapping = format!("{oid}={}", location.display());
    backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--tablespace", &mapping],
    )
    .expect_code(0);
    let link = target.join("pg_tblspc").join(&oid);
    assert_eq!(std::fs::read_link(&link).unwrap(), location);
    assert!(
        std::fs::read_dir(&location).unwrap().count() > 0,
        "tablespace files are missing"
    );
    // The map now points where the link does, so PostgreSQL keeps the link.
    let map = std::fs::read_to_string(target.join("tablespace_map")).unwrap_or_default();
    assert!(
        map.is_empty() || map == format!("{oid} {}\n", location.display()),
        "{map}"
    );
    // As root, what wale made for the data directory belongs to the archive's owner
    // (postgres), so that the server can start as that user.
    if wale::users::effective_uid() == 0 {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(target.join("PG_VERSION")).unwrap().uid();
        assert_ne!(owner, 0, "the fixture's files belong to postgres");
        for path in [
            target.clone(),
            target.join("pg_tblspc"),
            link.clone(),
            location.clone(),
            target.join("pg_wal"),
            target.join("tablespace_map"),
        ] {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                assert_eq!(meta.uid(), owner, "owner of {}", path.display());
            }
        }
    }
}

#[test]
fn restore_spec_source_restores_into_the_given_directory_not_the_original_one() {
    // WAL-E #291: --restore-spec restored into the spec's base_prefix. wale restores into
    // PG_CLUSTER_DIRECTORY and links each tablespace to the spec's location.
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("spec.json");
    let oid = fixture_meta("TABLESPACE_OID");
    let location = work.path().join("spec-ts");
    std::fs::write(&spec, format!(r#"{{"base_prefix": "/nonexistent/original/", "{oid}": {{"loc": "{}", "link": "pg_tblspc/{oid}"}}}}"#, location.display())).unwrap();
    let target = work.path().join("pgdata");
    backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--restore-spec", spec.to_str().unwrap()],
    )
    .expect_code(0);
    assert!(target.join("PG_VERSION").exists());
    assert!(!Path::new("/nonexistent/original").exists());
    assert_eq!(
        std::fs::read_link(target.join("pg_tblspc").join(&oid)).unwrap(),
        location
    );
}

#[test]
fn keep_wal_link_keeps_the_source_link() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--blind-restore", "--keep-wal-link"],
    )
    .expect_code(0);
    let link = std::fs::read_link(target.join("pg_wal")).unwrap();
    assert_eq!(link, PathBuf::from(fixture_meta("PG_WAL_LINK_TARGET")));
}

#[test]
fn live_non_empty_and_unknown_targets_are_refused() {
    let archive = Archive::fixture_copy();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep-me"), "x").unwrap();
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--blind-restore"],
    )
    .expect_code(2);
    assert!(
        run.stderr.contains("not empty") && run.stderr.contains("--overwrite"),
        "{}",
        run.stderr
    );
    std::fs::write(target.join("postmaster.pid"), "1").unwrap();
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--overwrite"],
    )
    .expect_code(2);
    assert!(run.stderr.contains("live data directory"), "{}", run.stderr);
    let empty = work.path().join("empty");
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &empty,
        &["base_0000000100000000000000AA_00000040"],
    )
    .expect_code(1);
    // A missing and an incomplete backup are told apart, at ERROR, and the target this
    // run created is gone again.
    assert!(
        run.error_lines().len() == 1 && run.stderr.contains("no backup named"),
        "{}",
        run.stderr
    );
    assert!(
        !empty.exists(),
        "the target backup-fetch created is left behind"
    );
    let incomplete = fixture_meta("INCOMPLETE_BACKUP_NAME");
    let run = backup_fetch(&archive, Backend::File, None, &empty, &[&incomplete]).expect_code(1);
    assert!(
        run.error_lines().len() == 1 && run.stderr.contains("is incomplete: it has no sentinel"),
        "{}",
        run.stderr
    );
    let nothing = Archive::empty();
    let run = backup_fetch(&nothing, Backend::File, None, &empty, &["LATEST"]).expect_code(1);
    assert!(run.stderr.contains("no complete backups"), "{}", run.stderr);

    // A file:// prefix naming no directory is a configuration mistake, not an empty archive.
    let mut cmd = wale();
    cmd.arg("--file-prefix=file:///no/such/archive")
        .arg("backup-fetch")
        .arg(&empty)
        .arg("LATEST");
    let run = Run::of(cmd).expect_code(201);
    assert!(
        run.stderr.contains("file:///no/such/archive")
            && run.stderr.contains("the archive directory does not exist"),
        "{}",
        run.stderr
    );
}

/// The first partition object of the fixture's backup in `archive`.
fn partition(archive: &Archive, n: u32) -> PathBuf {
    archive.root().join(format!(
        "basebackups_005/{}/tar_partitions/part_{n:08}.tar.lzo",
        fixture_meta("BACKUP_NAME")
    ))
}

#[test]
fn a_corrupt_partition_fails_clearly_leaves_no_pg_control_and_a_rerun_works() {
    let archive = Archive::fixture_copy();
    let part = partition(&archive, 1);
    let good = std::fs::read(&part).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&part, &bad).unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--blind-restore"],
    )
    .expect_code(202);
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("part_00000001.tar.lzo"), "{}", errors[0]);
    assert!(
        !run.stderr.contains("restored base_"),
        "success reported over a failure: {}",
        run.stderr
    );
    assert!(
        !target.join("global/pg_control").exists(),
        "a partial restore must not be startable"
    );
    // Fix the object and run again into the same directory: it completes.
    std::fs::write(&part, &good).unwrap();
    backup_fetch(
        &archive,
        Backend::File,
        None,
        &target,
        &["LATEST", "--blind-restore"],
    )
    .expect_code(0);
    assert!(target.join("global/pg_control").exists());
    assert_same_tree(&manifest(&target), &wal_e_restore_manifest(), "rerun");
}

#[test]
fn truncated_and_missing_partitions_are_refused() {
    let archive = Archive::fixture_copy();
    let part = partition(&archive, 2);
    let bytes = std::fs::read(&part).unwrap();
    std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &work.path().join("a"),
        &["LATEST", "--blind-restore"],
    )
    .expect_code(202);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    std::fs::remove_file(partition(&archive, 1)).unwrap();
    let run = backup_fetch(
        &archive,
        Backend::File,
        None,
        &work.path().join("b"),
        &["LATEST", "--blind-restore"],
    )
    .expect_code(202);
    assert!(
        run.stderr.contains("partition 1 is missing"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_connection_broken_mid_partition_resumes_by_range() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    server.inject("part_00000000.tar.lzo", Fault::Truncate(1_000_000));
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    let run = backup_fetch(
        &archive,
        Backend::S3,
        Some(&server),
        &target,
        &["LATEST", "--blind-restore"],
    )
    .expect_code(0);
    assert!(run.stderr.contains("resuming from there"), "{}", run.stderr);
    assert_same_tree(&manifest(&target), &wal_e_restore_manifest(), "resumed");
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("part_00000000"))
        .count();
    assert_eq!(gets, 2, "{:?}", server.requests());
}

/// Writes a one-partition backup whose tar is made by Python's tarfile from `script`
/// (which adds members to `tar`), compressed by the real lzop.
fn hostile_backup(archive: &Archive, script: &str) {
    hostile_backup_with_spec(
        archive,
        script,
        r#"{"base_prefix": "/x/", "tablespaces": []}"#,
    );
}

fn hostile_backup_with_spec(archive: &Archive, script: &str, spec: &str) {
    let name = "base_000000010000000000000002_00000040";
    let dir = archive.root().join("basebackups_005");
    std::fs::create_dir_all(dir.join(name).join("tar_partitions")).unwrap();
    std::fs::write(
        dir.join(format!("{name}_backup_stop_sentinel.json")),
        format!(r#"{{"wal_segment_backup_stop": "000000010000000000000002", "wal_segment_offset_backup_stop": "00000256", "expanded_size_bytes": 10, "spec": {spec}}}"#),
    )
    .unwrap();
    let program = format!(
        "import io, sys, tarfile\nbuf = io.BytesIO()\ntar = tarfile.open(fileobj=buf, mode='w', format=tarfile.PAX_FORMAT)\n\
         def add(name, kind=tarfile.REGTYPE, data=b'', link=''):\n    t = tarfile.TarInfo(name)\n    t.type = kind\n    t.size = len(data)\n    t.linkname = link\n    t.mode = 0o600\n    tar.addfile(t, io.BytesIO(data))\n\
         add('ok', data=b'fine')\n{script}\ntar.close()\nsys.stdout.buffer.write(buf.getvalue())\n"
    );
    let tar = Command::new("python3")
        .arg("-c")
        .arg(&program)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    std::fs::write(
        dir.join(name).join("tar_partitions/part_00000000.tar.lzo"),
        lzop_compress(&tar.stdout, &[]),
    )
    .unwrap();
}

/// A directory beside the target holding one file an attack would try to reach.
fn outside_with_secret(work: &Path) -> PathBuf {
    let outside = work.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "do not touch").unwrap();
    outside
}

/// Panics unless `outside` still holds exactly the untouched secret.
fn assert_untouched(outside: &Path, what: &str) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "{what}: something was written outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "do not touch",
        "{what}"
    );
}

#[test]
fn hostile_archives_are_refused_and_nothing_appears_outside_the_target() {
    let cases = [
        ("dot-dot", "add('../escaped', data=b'x')"),
        ("absolute", "add('/tmp/wale-absolute-escape', data=b'x')"),
        (
            "symlink escape",
            "add('link', tarfile.SYMTYPE, link='../outside')\nadd('link/pwned', data=b'x')",
        ),
        (
            "absolute symlink escape",
            "add('link', tarfile.SYMTYPE, link='/')\nadd('link/tmp/wale-pwned', data=b'x')",
        ),
        (
            "hard link escape",
            "add('hl', tarfile.LNKTYPE, link='../outside/secret')",
        ),
        (
            "hard link through symlink",
            "add('link', tarfile.SYMTYPE, link='../outside')\nadd('hl', tarfile.LNKTYPE, link='link/secret')",
        ),
        (
            "directory through symlink",
            "add('link', tarfile.SYMTYPE, link='../outside')\nadd('link/sub', tarfile.DIRTYPE)",
        ),
        ("device", "add('dev', tarfile.CHRTYPE)"),
        (
            "link into pg_tblspc",
            "add('pg_tblspc/99', tarfile.SYMTYPE, link='../../outside')",
        ),
        (
            "wale's marker",
            "add('.wale-backup-fetch-incomplete', tarfile.SYMTYPE, link='../outside/secret')",
        ),
    ];
    for (what, script) in cases {
        let archive = Archive::empty();
        hostile_backup(&archive, script);
        let work = tempfile::tempdir().unwrap();
        let outside = outside_with_secret(work.path());
        let target = work.path().join("pgdata");
        let run =
            backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]).expect_code(202);
        let errors = run.error_lines();
        assert_eq!(errors.len(), 1, "{what}: {}", run.stderr);
        assert!(
            errors[0].contains("refused") || errors[0].contains("unsafe"),
            "{what}: {}",
            errors[0]
        );
        assert_untouched(&outside, what);
        assert!(!work.path().join("escaped").exists(), "{what}");
        assert!(
            !Path::new("/tmp/wale-absolute-escape").exists()
                && !Path::new("/tmp/wale-pwned").exists(),
            "{what}"
        );
    }
}

#[test]
fn a_symlink_archived_as_a_file_member_is_replaced_not_followed() {
    // A symlink followed by a file of the same name: the file replaces the link.
    let archive = Archive::empty();
    hostile_backup(
        &archive,
        "add('x', tarfile.SYMTYPE, link='../outside/secret')\nadd('x', data=b'replaced')",
    );
    let work = tempfile::tempdir().unwrap();
    let outside = outside_with_secret(work.path());
    let target = work.path().join("pgdata");
    backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(target.join("x")).unwrap(),
        "replaced"
    );
    assert_untouched(&outside, "a file replacing a symlink");
}

#[test]
fn an_archive_cannot_replace_a_tablespace_link_or_redirect_tablespace_map() {
    let spec = r#"{"base_prefix": "/x/", "tablespaces": ["16386"], "16386": {"loc": "/srv/ts/", "link": "pg_tblspc/16386"}}"#;
    let cases = [
        (
            "replace the link",
            "add('pg_tblspc/16386', tarfile.SYMTYPE, link='../../outside')\nadd('pg_tblspc/16386/x', data=b'x')",
        ),
        ("file over the link", "add('pg_tblspc/16386', data=b'x')"),
        (
            "tablespace_map through a link",
            "add('tablespace_map', tarfile.SYMTYPE, link='../outside/secret')",
        ),
    ];
    for (what, script) in cases {
        let archive = Archive::empty();
        hostile_backup_with_spec(&archive, script, spec);
        let work = tempfile::tempdir().unwrap();
        let outside = outside_with_secret(work.path());
        let mapping = format!("16386={}", work.path().join("ts").display());
        let target = work.path().join("pgdata");
        let run = backup_fetch(
            &archive,
            Backend::File,
            None,
            &target,
            &["LATEST", "--tablespace", &mapping],
        );
        assert!(
            run.code != 0 && run.code != 1,
            "{what}: exit {}\n{}",
            run.code,
            run.stderr
        );
        assert_untouched(&outside, what);
    }
}

#[test]
fn set_user_id_bits_are_not_restored() {
    let archive = Archive::empty();
    hostile_backup(
        &archive,
        "t = tarfile.TarInfo('suid')\nt.mode = 0o4755\ntar.addfile(t, io.BytesIO(b''))",
    );
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]).expect_code(0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(target.join("suid"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn deep_nesting_is_restored_or_refused_cleanly() {
    // 300 levels: a path far past PATH_MAX (4096) for the deepest file.
    let archive = Archive::empty();
    hostile_backup(
        &archive,
        "p = ''\nfor i in range(300):\n    p += 'd%03d/' % i\n    add(p, tarfile.DIRTYPE)\nadd(p + 'deep-file', data=b'deep')",
    );
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    let run = backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]);
    match run.code {
        0 => {
            let mut path = target.clone();
            for i in 0..300 {
                path.push(format!("d{i:03}"));
            }
            assert_eq!(std::fs::read(path.join("deep-file")).unwrap(), b"deep");
        }
        203 => assert_eq!(run.error_lines().len(), 1, "{}", run.stderr),
        other => panic!("exit {other}: {}", run.stderr),
    }
    assert!(!target.join("global/pg_control").exists());
}

#[test]
fn a_member_claiming_a_huge_size_is_a_truncated_stream_not_an_allocation() {
    let archive = Archive::empty();
    hostile_backup(
        &archive,
        "t = tarfile.TarInfo('huge')\nt.size = 10**12\ntar.addfile(t)\ntar.fileobj.write(b'x' * 1024)",
    );
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("pgdata");
    let run = backup_fetch(&archive, Backend::File, None, &target, &["LATEST"]).expect_code(202);
    assert!(
        run.stderr.contains("truncated tar stream"),
        "{}",
        run.stderr
    );
    assert!(!target.join("global/pg_control").exists());
}
