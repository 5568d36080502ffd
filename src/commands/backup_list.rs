//! `backup-list [QUERY] [--detail] [--json]`: WAL-E's table of complete base backups.
//!
//! The table is byte-for-byte WAL-E's: Python `csv` "excel-tab" dialect (TAB separated,
//! CRLF line ends, quoting only when needed), a header row always, empty cells for
//! unknown values. `--json` prints the same rows as an array of objects.

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::backups::{self, Query, SentinelDetail};
use crate::cli::BackupListArgs;
use crate::config::Config;
use crate::error::Error;
use crate::layout::Layout;
use crate::storage::Store;

const COLUMNS: [&str; 7] = [
    "name",
    "last_modified",
    "expanded_size_bytes",
    "wal_segment_backup_start",
    "wal_segment_offset_backup_start",
    "wal_segment_backup_stop",
    "wal_segment_offset_backup_stop",
];

/// One output row. The sentinel's columns are `None` without `--detail` (not read: empty
/// cells in the table, absent from JSON); with it, a value the sentinel lacks is an empty
/// cell or JSON `null`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    last_modified: String,
    wal_segment_backup_start: String,
    wal_segment_offset_backup_start: String,
    #[serde(flatten)]
    detail: Option<DetailColumns>,
}

/// The columns only the sentinel knows.
#[derive(Debug, Serialize)]
struct DetailColumns {
    expanded_size_bytes: Option<u64>,
    wal_segment_backup_stop: Option<String>,
    wal_segment_offset_backup_stop: Option<String>,
}

pub async fn run(config: &Config, args: &BackupListArgs) -> Result<(), Error> {
    let query = Query::parse(args.query.as_deref())?;
    let store = Arc::new(Store::open(&config.store).await?);
    let layout = Layout::new(config.store.path_prefix());
    let all = crate::retry::with_retries(&config.retry, "list backups", || {
        backups::list(&store, &layout)
    })
    .await?;
    let selected = backups::select(all, &query);
    let details: Vec<Option<SentinelDetail>> = if args.detail {
        backups::read_details(&store, &layout, &selected, &config.retry)
            .await?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; selected.len()]
    };
    let rows: Vec<Row> = selected
        .iter()
        .zip(details)
        .map(|(backup, detail)| Row {
            name: backup.name.to_string(),
            last_modified: backup.sentinel.last_modified_text.clone(),
            wal_segment_backup_start: backup.name.start_segment().to_string(),
            wal_segment_offset_backup_start: backup.name.start_offset().to_string(),
            detail: detail.map(|detail| DetailColumns {
                expanded_size_bytes: detail.expanded_size_bytes,
                wal_segment_backup_stop: detail.wal_segment_backup_stop,
                wal_segment_offset_backup_stop: detail.wal_segment_offset_backup_stop,
            }),
        })
        .collect();
    let out = if args.json {
        render_json(&rows)
    } else {
        render_table(&rows)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::local("<stdout>", "cannot write the listing", e))
}

fn render_table(rows: &[Row]) -> String {
    let mut out = String::new();
    push_record(&mut out, COLUMNS.iter().map(|c| c.to_string()));
    for row in rows {
        let detail = row.detail.as_ref();
        push_record(
            &mut out,
            [
                row.name.clone(),
                row.last_modified.clone(),
                detail
                    .and_then(|d| d.expanded_size_bytes)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                row.wal_segment_backup_start.clone(),
                row.wal_segment_offset_backup_start.clone(),
                detail
                    .and_then(|d| d.wal_segment_backup_stop.clone())
                    .unwrap_or_default(),
                detail
                    .and_then(|d| d.wal_segment_offset_backup_stop.clone())
                    .unwrap_or_default(),
            ],
        );
    }
    out
}

fn render_json(rows: &[Row]) -> String {
    let mut out = serde_json::to_string_pretty(rows).expect("rows serialize");
    out.push('\n');
    out
}

/// One record in Python's excel-tab dialect: quote a field only if it holds a tab, a
/// quote or a line break, doubling quotes inside; end with CRLF.
fn push_record(out: &mut String, fields: impl IntoIterator<Item = String>) {
    for (i, field) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        if field.contains(['\t', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&field);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_wal_e_bytes() {
        let rows = [Row {
            name: "base_000000010000000000000003_00000040".into(),
            last_modified: "2026-11-25T00:48:14.253Z".into(),
            wal_segment_backup_start: "000000010000000000000003".into(),
            wal_segment_offset_backup_start: "00000040".into(),
            detail: Some(DetailColumns {
                expanded_size_bytes: Some(49884552),
                wal_segment_backup_stop: Some("000000010000000000000003".into()),
                wal_segment_offset_backup_stop: Some("00000256".into()),
            }),
        }];
        let expected = "name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\twal_segment_offset_backup_start\twal_segment_backup_stop\twal_segment_offset_backup_stop\r\n\
base_000000010000000000000003_00000040\t2026-11-25T00:48:14.253Z\t49884552\t000000010000000000000003\t00000040\t000000010000000000000003\t00000256\r\n";
        assert_eq!(render_table(&rows), expected);
        assert!(render_table(&[]).ends_with("wal_segment_offset_backup_stop\r\n"));
    }

    #[test]
    fn quoting_follows_python_csv() {
        let mut out = String::new();
        push_record(
            &mut out,
            ["a\tb".to_string(), "say \"hi\"".to_string(), String::new()],
        );
        assert_eq!(out, "\"a\tb\"\t\"say \"\"hi\"\"\"\t\r\n");
    }
}
