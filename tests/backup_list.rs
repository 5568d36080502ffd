use std::time::{Duration, SystemTime};

use crate::common::*;

/// Parses WAL-E's printed times (`2026-11-25T00:48:14.253Z` or `…T01:50:26.660985`, UTC).
fn parse_time(text: &str) -> SystemTime {
    let t = text.trim_end_matches('Z');
    let (date, time) = t.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<u64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().unwrap();
    // Days from civil (Howard Hinnant).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    SystemTime::UNIX_EPOCH + Duration::new(days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2], nanos)
}

/// The `last_modified` cell of the first data row of a recorded listing.
fn recorded_time(listing: &str) -> String {
    listing
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .to_string()
}

fn sentinel_path(archive: &Archive, backup: &str) -> std::path::PathBuf {
    archive.root().join(format!(
        "basebackups_005/{backup}_backup_stop_sentinel.json"
    ))
}

fn list(archive: &Archive, backend: Backend, server: Option<&S3Server>, args: &[&str]) -> Run {
    let mut cmd = wale_for(archive, backend, server);
    cmd.arg("backup-list").args(args);
    Run::of(cmd)
}

#[test]
fn file_backend_output_is_byte_identical_to_wal_e() {
    let recorded = std::fs::read_to_string(fixture().join("backup-list.txt")).unwrap();
    let archive = Archive::fixture_copy();
    // A checkout resets file times; put back the one WAL-E saw.
    set_mtime(
        &sentinel_path(&archive, &fixture_meta("BACKUP_NAME")),
        parse_time(&recorded_time(&recorded)),
    );
    let run = list(&archive, Backend::File, None, &[]).expect_code(0);
    assert_eq!(run.stdout_text(), recorded);
    for query in ["LATEST".to_string(), fixture_meta("BACKUP_NAME")] {
        let run = list(&archive, Backend::File, None, &[&query]).expect_code(0);
        assert_eq!(run.stdout_text(), recorded, "query {query}");
    }
}

#[test]
fn s3_detail_output_is_byte_identical_to_wal_e() {
    // Real WAL-E's `backup-list --detail` over S3, and the sentinel it listed.
    let recorded =
        std::fs::read_to_string(repo().join("fixtures/wal-e-s3/backup-list-detail.txt")).unwrap();
    let archive = Archive::empty();
    let name = "base_000000010000000000000003_00000040";
    let sentinel = sentinel_path(&archive, name);
    std::fs::create_dir_all(sentinel.parent().unwrap()).unwrap();
    std::fs::copy(
        repo().join(format!(
            "fixtures/wal-e-s3/{name}_backup_stop_sentinel.json"
        )),
        &sentinel,
    )
    .unwrap();
    set_mtime(&sentinel, parse_time(&recorded_time(&recorded)));
    let server = S3Server::start(&archive.s3_root());
    let run = list(&archive, Backend::S3, Some(&server), &["--detail"]).expect_code(0);
    assert_eq!(run.stdout_text(), recorded);
    // Only the backup directory is listed, with a delimiter; WAL is never listed.
    let requests = server.requests();
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.contains("list-type=2"))
        .collect();
    assert_eq!(lists.len(), 1, "{requests:?}");
    assert!(
        lists[0].contains("delimiter=%2F") && lists[0].contains("basebackups_005"),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("wal_005")),
        "{requests:?}"
    );
}

#[test]
fn detail_reads_the_sentinel_on_both_backends() {
    // WAL-E's file backend never reads sentinels and prints empty columns; wale reads
    // them everywhere (a documented difference).
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let backup = fixture_meta("BACKUP_NAME");
    let sentinel: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sentinel_path(&archive, &backup)).unwrap()).unwrap();
    for backend in BACKENDS {
        let run = list(&archive, backend, Some(&server), &["--detail"]).expect_code(0);
        let text = run.stdout_text();
        let row: Vec<&str> = text.lines().nth(1).unwrap().split('\t').collect();
        assert_eq!(row[0], backup);
        assert_eq!(row[2], sentinel["expanded_size_bytes"].to_string());
        assert_eq!(
            row[5],
            sentinel["wal_segment_backup_stop"].as_str().unwrap()
        );
        assert_eq!(
            row[6].trim_end(),
            sentinel["wal_segment_offset_backup_stop"].as_str().unwrap()
        );
    }
}

#[test]
fn incomplete_backups_are_skipped_and_queries_select() {
    let archive = Archive::fixture_copy();
    let server = S3Server::start(&archive.s3_root());
    let complete = fixture_meta("BACKUP_NAME");
    let incomplete = fixture_meta("INCOMPLETE_BACKUP_NAME");
    assert!(
        archive
            .root()
            .join("basebackups_005")
            .join(&incomplete)
            .is_dir()
    );
    for backend in BACKENDS {
        let all = list(&archive, backend, Some(&server), &[])
            .expect_code(0)
            .stdout_text();
        assert!(
            all.contains(&complete) && !all.contains(&incomplete),
            "{all}"
        );
        let latest = list(&archive, backend, Some(&server), &["LATEST"])
            .expect_code(0)
            .stdout_text();
        assert!(latest.contains(&complete));
        // A valid name that is not a complete backup: header only, still success.
        let none = list(&archive, backend, Some(&server), &[&incomplete])
            .expect_code(0)
            .stdout_text();
        assert_eq!(none.lines().count(), 1, "{none}");
        let run = list(&archive, backend, Some(&server), &["yesterday"]).expect_code(2);
        assert!(
            run.stderr.contains("invalid backup query"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn latest_follows_wal_e_and_warns_when_wal_order_disagrees() {
    let archive = Archive::fixture_copy();
    let older_in_wal = fixture_meta("BACKUP_NAME");
    let later_in_wal = "base_0000000100000000000000F0_00000040";
    let sentinel = sentinel_path(&archive, &older_in_wal);
    let copy = sentinel_path(&archive, later_in_wal);
    std::fs::copy(&sentinel, &copy).unwrap();
    // The backup that starts later in WAL has the older sentinel (copied objects, WAL-E #398).
    set_mtime(
        &copy,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    set_mtime(
        &sentinel,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
    let run = list(&archive, Backend::File, None, &["LATEST"]).expect_code(0);
    let text = run.stdout_text();
    assert!(
        text.contains(&older_in_wal) && !text.contains(later_in_wal),
        "{text}"
    );
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains(later_in_wal),
        "{}",
        run.stderr
    );
}

#[test]
fn json_output_has_the_same_rows() {
    let archive = Archive::fixture_copy();
    let run = list(&archive, Backend::File, None, &["--json", "--detail"]).expect_code(0);
    let rows: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], fixture_meta("BACKUP_NAME"));
    assert!(rows[0]["expanded_size_bytes"].as_u64().unwrap() > 0);
    let plain = list(&archive, Backend::File, None, &["--json"]).expect_code(0);
    let rows: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    // Without --detail the sentinel is not read: its fields are absent, not null.
    let mut fields: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "last_modified",
            "name",
            "wal_segment_backup_start",
            "wal_segment_offset_backup_start"
        ]
    );
}
