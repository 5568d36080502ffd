//! `wale verify` on real WAL-E archives: a clean two-timeline archive (`wale-heroku`),
//! a three-partition backup (`wale-small`), the GPG archive, and each kind of damage:
//! missing segments before and after the backup's stop, a missing history file, flipped,
//! cut and missing partitions, a missing sentinel.

use std::path::{Path, PathBuf};

use crate::common::*;

fn fixture_dir(name: &str) -> PathBuf {
    repo().join("fixtures").join(name)
}

/// A copy of a fixture's archive.
fn archive_of(fixture: &str) -> Archive {
    let archive = Archive::empty();
    copy_tree(&fixture_dir(fixture).join("archive"), &archive.root());
    archive
}

fn verify(archive: &Archive, backend: Backend, server: Option<&S3Server>, args: &[&str]) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    cmd.arg("verify").args(args);
    Run::of(cmd)
}

fn json_of(run: &Run) -> serde_json::Value {
    serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout_text()))
}

fn problems(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["object"].as_str().unwrap().to_string(),
                p["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_clean_two_timeline_archive_verifies_on_both_backends() {
    let archive = archive_of("wale-heroku");
    let server = S3Server::start(&archive.s3_root());
    for backend in BACKENDS {
        let run = verify(&archive, backend, Some(&server), &["--json"]).expect_code(0);
        let report = json_of(&run);
        assert_eq!(report["recovery_timelines"], serde_json::json!([1, 2]));
        assert_eq!(report["restorable_to_end"], true);
        assert_eq!(
            report["restorable_to"],
            meta_of(&fixture_dir("wale-heroku"), "END_WAL_SEGMENT")
        );
        assert_eq!(report["timelines"].as_array().unwrap().len(), 2);
        let backup = &report["backups"][0];
        assert_eq!(backup["ok"], true, "{backend:?}");
        assert_eq!(backup["bytes"], backup["expanded_size_bytes"]);
        assert!(problems(&report).is_empty());
        // The summary says the same.
        let run = verify(&archive, backend, Some(&server), &[]).expect_code(0);
        assert!(
            run.stdout_text()
                .contains("restorable to the end of the archive"),
            "{}",
            run.stdout_text()
        );
    }
}

#[test]
fn missing_segments_are_named_with_what_they_cost() {
    let archive = archive_of("wale-heroku");
    let backup_start = "000000010000000000000003";
    // Before the backup's stop: the backup cannot be restored at all.
    let removed = archive.wal_object(backup_start);
    let kept = std::fs::read(&removed).unwrap();
    std::fs::remove_file(&removed).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--wal-only"]).expect_code(1);
    let report = json_of(&run);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].1.ends_with(&format!("{backup_start}.lzo"))
            && found[0].2.contains("cannot be restored"),
        "{found:?}"
    );
    assert_eq!(report["restorable_to"], serde_json::Value::Null);
    std::fs::write(&removed, kept).unwrap();

    // After it, on the second timeline: restorable up to the segment before the gap.
    let gap = "000000020000000000000007";
    std::fs::remove_file(archive.wal_object(gap)).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--wal-only"]).expect_code(1);
    let report = json_of(&run);
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].1.ends_with(&format!("{gap}.lzo")) && found[0].2.contains("a gap"),
        "{found:?}"
    );
    assert_eq!(report["restorable_to"], "000000020000000000000006");
    assert_eq!(report["restorable_to_end"], false);
    assert_eq!(
        report["timelines"][1]["gaps"],
        serde_json::json!([gap]),
        "{report:#}"
    );
}

#[test]
fn a_missing_history_file_is_reported() {
    let archive = archive_of("wale-heroku");
    std::fs::remove_file(archive.root().join("wal_005/00000002.history.lzo")).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--wal-only"]).expect_code(1);
    let found = problems(&json_of(&run));
    assert!(
        found
            .iter()
            .any(|(kind, object, _)| kind == "missing" && object.ends_with("00000002.history.lzo")),
        "{found:?}"
    );
}

fn partition(archive: &Archive, n: u32) -> PathBuf {
    archive.root().join(format!(
        "basebackups_005/{}/tar_partitions/part_{n:08}.tar.lzo",
        fixture_meta("BACKUP_NAME")
    ))
}

fn damaged_partition(how: &str, damage: impl Fn(&Path)) -> (String, Run) {
    let archive = Archive::fixture_copy();
    damage(&partition(&archive, 1));
    let run = verify(&archive, Backend::File, None, &["--json", "--backup-only"]);
    (how.to_string(), run)
}

#[test]
fn damaged_backups_are_corrupt_or_missing_naming_the_partition() {
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    };
    let cut = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    };
    for (how, run) in [
        damaged_partition("bit flip", flip),
        damaged_partition("cut", cut),
    ] {
        let run = run.expect_code(202);
        let found = problems(&json_of(&run));
        assert!(
            found
                .iter()
                .any(|(kind, object, _)| kind == "corrupt"
                    && object.ends_with("part_00000001.tar.lzo")),
            "{how}: {found:?}"
        );
    }

    // The last partition gone: only the planned size tells.
    let archive = Archive::fixture_copy();
    std::fs::remove_file(partition(&archive, 2)).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--backup-only"]).expect_code(1);
    let found = problems(&json_of(&run));
    assert!(
        found
            .iter()
            .any(|(kind, _, reason)| kind == "missing" && reason.contains("planned")),
        "{found:?}"
    );
    // A partition in the middle gone: the numbering has a hole.
    let archive = Archive::fixture_copy();
    std::fs::remove_file(partition(&archive, 1)).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--backup-only"]).expect_code(202);
    let found = problems(&json_of(&run));
    assert!(
        found
            .iter()
            .any(|(_, _, reason)| reason.contains("partition 1 is missing")),
        "{found:?}"
    );
    // No sentinel: WAL-E never finished it, so it is no backup at all.
    let archive = Archive::fixture_copy();
    let name = fixture_meta("BACKUP_NAME");
    std::fs::remove_file(
        archive
            .root()
            .join(format!("basebackups_005/{name}_backup_stop_sentinel.json")),
    )
    .unwrap();
    let run = verify(&archive, Backend::File, None, &[&name]).expect_code(1);
    assert!(run.stderr.contains("no sentinel"), "{}", run.stderr);
}

#[test]
fn an_encrypted_archive_verifies_with_its_key_and_not_without() {
    let archive = archive_of("wale-gpg");
    let key = fixture_dir("wale-gpg").join("secret-key.asc");
    let mut cmd = wale_for(&archive, Backend::File, None);
    cmd.env("WALE_PGP_KEY_PATH", &key)
        .args(["verify", "--json"]);
    let report = json_of(&Run::of(cmd).expect_code(0));
    assert_eq!(report["restorable_to_end"], true);
    let run = verify(&archive, Backend::File, None, &["--json", "--backup-only"]).expect_code(202);
    let found = problems(&json_of(&run));
    assert!(
        found
            .iter()
            .any(|(_, _, reason)| reason.contains("no key is configured")),
        "{found:?}"
    );
}

#[test]
fn wal_deep_reads_every_needed_segment_and_checks_whose_it_is() {
    let archive = archive_of("wale-heroku");
    let deep = verify(&archive, Backend::File, None, &["--wal-deep"]).expect_code(0);
    // It says what it read and checked, which plain verify does not.
    let summary = deep.stdout_text();
    let line = summary
        .lines()
        .find(|l| l.starts_with("wal-deep: "))
        .unwrap_or_else(|| panic!("no wal-deep line:\n{summary}"));
    let segments: u64 = line["wal-deep: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(segments > 1, "{line}");
    assert!(
        line.contains(&format!(
            "{segments} segments downloaded and decoded ({} bytes decompressed)",
            segments * 16 * 1024 * 1024
        )) && line.contains("lzop checksums")
            && line.contains("system identifier")
            && line.ends_with(&format!("{segments} ok, 0 corrupt")),
        "{line}"
    );
    let deep_json =
        json_of(&verify(&archive, Backend::File, None, &["--json", "--wal-deep"]).expect_code(0));
    assert_eq!(deep_json["wal_deep"]["segments"], segments, "{deep_json:#}");
    assert_eq!(deep_json["wal_deep"]["ok"], segments, "{deep_json:#}");
    let plain = verify(&archive, Backend::File, None, &[]).expect_code(0);
    assert!(
        !plain.stdout_text().contains("wal-deep"),
        "{}",
        plain.stdout_text()
    );
    let plain_json = json_of(&verify(&archive, Backend::File, None, &["--json"]).expect_code(0));
    assert!(plain_json.get("wal_deep").is_none(), "{plain_json:#}");
    // A segment stored under another segment's name.
    let (wrong, right) = ("000000020000000000000008", "000000020000000000000007");
    std::fs::copy(archive.wal_object(right), archive.wal_object(wrong)).unwrap();
    let run = verify(&archive, Backend::File, None, &["--json", "--wal-deep"]).expect_code(202);
    let found = problems(&json_of(&run));
    assert!(
        found.len() == 1 && found[0].1.ends_with(&format!("{wrong}.lzo")),
        "{found:?}"
    );
    assert_eq!(json_of(&run)["wal_deep"]["corrupt"], 1);
    // Without --wal-deep the listing alone cannot tell.
    verify(&archive, Backend::File, None, &["--wal-only"]).expect_code(0);
}
