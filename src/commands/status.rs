//! `status PGDATA [--json | --format prometheus]`: where a restored server stands
//! against the archive, and an exit status scripts can rely on ([`exit_status`]).
//!
//! The facts come from [`crate::standby`], which `promote` decides on too; this module
//! prints them (text, JSON, or Prometheus' format) and turns them into an exit status.

use std::path::Path;

use crate::cli::{StatusArgs, StatusFormat};
use crate::config::Config;
use crate::error::Error;
use crate::standby::{Report, gather};
use crate::text::counted;

/// `wale status`'s exit statuses, for scripts (as `pg_isready` has its own). They
/// leave out every status of [`crate::error::exit`]: a failure keeps its own.
pub mod exit_status {
    /// Caught up: the server has replayed everything the archive holds.
    pub const CAUGHT_UP: u8 = 0;
    /// In recovery and not caught up: behind, catching up, starting up, paused by request,
    /// or the archive could not be asked.
    pub const BEHIND: u8 = 3;
    /// A point-in-time recovery paused at its target (`wale promote` ends it there).
    pub const PAUSED_AT_TARGET: u8 = 4;
    /// No server runs on the data directory (or it does not answer).
    pub const NOT_RUNNING: u8 = 5;
    /// The directory is missing or is not a PostgreSQL data directory.
    pub const NOT_A_DATA_DIRECTORY: u8 = 6;
    /// The server runs and is not in recovery: promoted, or a primary.
    pub const NOT_IN_RECOVERY: u8 = 7;
}

/// Runs `wale status`; its exit status is [`exit_status`]'s for the report.
pub async fn run(config: &Config, args: &StatusArgs) -> Result<u8, Error> {
    let report = gather(config, &args.pgdata, args.pg_bin.as_deref()).await?;
    match args.output_format() {
        StatusFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Error::Internal(format!("cannot print JSON: {e}")))?
        ),
        StatusFormat::Prometheus => print!("{}", prometheus(&report, unix_now())),
        StatusFormat::Text => print_human(&report),
    }
    Ok(exit_status(&report))
}

/// The exit status a report gives (see [`exit_status`]).
pub fn exit_status(report: &Report) -> u8 {
    if report.caught_up {
        exit_status::CAUGHT_UP
    } else if report.paused_at_target {
        exit_status::PAUSED_AT_TARGET
    } else if !report.running || report.in_recovery.is_none() {
        exit_status::NOT_RUNNING
    } else if report.in_recovery == Some(false) {
        exit_status::NOT_IN_RECOVERY
    } else {
        exit_status::BEHIND
    }
}

/// Why `pgdata` is not a data directory `status` can report on (missing, not a
/// directory, no `global/pg_control`); `None` when it is one, or when that cannot be
/// told (a permission error is left to [`gather`], which names it).
pub fn not_a_data_directory(pgdata: &Path) -> Option<String> {
    let shown = pgdata.display();
    match std::fs::metadata(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{shown}: no such directory"));
        }
        Ok(meta) if !meta.is_dir() => return Some(format!("{shown}: not a directory")),
        _ => {}
    }
    match std::fs::metadata(pgdata.join("global/pg_control")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "{shown}: not a PostgreSQL data directory (no global/pg_control)"
        )),
        _ => None,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn print_human(report: &Report) {
    let what = match (report.running, report.in_recovery, report.standby) {
        (false, _, _) => "not running".to_string(),
        (true, Some(true), true) => "hot standby following the archive".to_string(),
        (true, Some(true), false) if report.paused_at_target => {
            "paused at the recovery target".to_string()
        }
        (true, Some(true), false) => "recovering from the archive".to_string(),
        _ => "running, not in recovery".to_string(),
    };
    println!("{}: {what}", report.pgdata.display());
    if let Some(timeline) = report.timeline {
        println!("  timeline:        {timeline}");
    }
    if let Some(target) = &report.recovery_target {
        println!("  recovery target: {target}");
    }
    if let (Some(lsn), Some(segment)) = (&report.replay_lsn, &report.replay_segment) {
        println!("  replayed to:     {lsn} (segment {segment})");
    }
    if let Some(time) = &report.replay_timestamp {
        println!("  last commit:     {time}");
    }
    if let Some(last) = &report.archive_last_segment {
        println!(
            "  archive newest:  {last} ({}, {} behind)",
            counted(
                report.lag_segments.unwrap_or_default(),
                "segment",
                "segments"
            ),
            counted(report.lag_bytes.unwrap_or_default(), "byte", "bytes")
        );
    }
    if let Some(error) = &report.last_error {
        println!("  last error:      {error}");
    }
    println!(
        "  caught up:       {} ({})",
        if report.caught_up { "yes" } else { "no" },
        report.reason
    );
    if (report.caught_up && report.standby) || report.paused_at_target {
        println!(
            "  next:            wale promote {} at cutover",
            report.pgdata.display()
        );
    }
}

/// One metric of the Prometheus text format: HELP and TYPE lines, then its sample when
/// the value is known.
struct Metric {
    name: &'static str,
    help: &'static str,
    value: Option<u64>,
}

/// The report in Prometheus' text exposition format, for the node exporter's textfile
/// collector: one gauge per fact, each with a `pgdata` label; unknown values have no
/// sample (e.g. the lag of a server that is not running).
pub fn prometheus(report: &Report, now: u64) -> String {
    let flag = |b: bool| Some(u64::from(b));
    let metrics = [
        Metric {
            name: "wale_server_running",
            help: "Whether a server runs on the data directory (1) or not (0).",
            value: flag(report.running),
        },
        Metric {
            name: "wale_in_recovery",
            help: "Whether the server is in recovery (1) or not (0).",
            value: report.in_recovery.map(u64::from),
        },
        Metric {
            name: "wale_caught_up",
            help: "Whether the server has replayed everything the archive holds (1) or not (0).",
            value: flag(report.caught_up),
        },
        Metric {
            name: "wale_paused_at_target",
            help: "Whether recovery is paused at its recovery target (1) or not (0).",
            value: flag(report.paused_at_target),
        },
        Metric {
            name: "wale_lag_segments",
            help: "WAL segments the archive holds beyond the one being replayed.",
            value: report.lag_segments,
        },
        Metric {
            name: "wale_lag_bytes",
            help: "Bytes of WAL from the replay position to the end of the archive's newest segment.",
            value: report.lag_bytes,
        },
        Metric {
            name: "wale_last_wal_fetch_error_age_seconds",
            help: "Seconds since the last wal-fetch failure not followed by a success (no sample when there is none).",
            value: report.last_error_unix_time.map(|t| now.saturating_sub(t)),
        },
    ];
    let label = prometheus_label(&report.pgdata.to_string_lossy());
    let mut text = String::new();
    for metric in metrics {
        text.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            metric.name, metric.help, metric.name
        ));
        if let Some(value) = metric.value {
            text.push_str(&format!("{}{{pgdata=\"{label}\"}} {value}\n", metric.name));
        }
    }
    text
}

/// A label value escaped as the text format asks: backslash, double quote, newline.
fn prometheus_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn report() -> Report {
        Report {
            pgdata: PathBuf::from("/srv/pg \"a\""),
            running: true,
            in_recovery: Some(true),
            standby: true,
            recovery_target: None,
            timeline: Some(1),
            replay_lsn: Some("0/3000060".into()),
            replay_segment: Some("000000010000000000000003".into()),
            replay_timestamp: None,
            archive_last_segment: Some("000000010000000000000004".into()),
            newer_timeline: None,
            lag_segments: Some(1),
            lag_bytes: Some(33554336),
            paused: false,
            paused_at_target: false,
            last_not_found: None,
            last_error: Some("s3://b/k: access denied".into()),
            last_error_unix_time: Some(1_000),
            archive_error: None,
            caught_up: false,
            reason: "1 segment behind the archive".into(),
        }
    }

    #[test]
    fn exit_statuses_tell_each_state_and_clash_with_no_failure() {
        let behind = report();
        assert_eq!(exit_status(&behind), exit_status::BEHIND);
        let caught_up = Report {
            caught_up: true,
            ..report()
        };
        assert_eq!(exit_status(&caught_up), 0);
        let at_target = Report {
            paused: true,
            paused_at_target: true,
            ..report()
        };
        assert_eq!(exit_status(&at_target), exit_status::PAUSED_AT_TARGET);
        let stopped = Report {
            running: false,
            in_recovery: None,
            ..report()
        };
        assert_eq!(exit_status(&stopped), exit_status::NOT_RUNNING);
        let promoted = Report {
            in_recovery: Some(false),
            ..report()
        };
        assert_eq!(exit_status(&promoted), exit_status::NOT_IN_RECOVERY);
        use crate::error::exit;
        let failures = [
            exit::NOT_FOUND,
            exit::USAGE,
            exit::UNAVAILABLE,
            exit::STORE_REFUSED,
            exit::CORRUPT,
            exit::LOCAL,
            exit::WAL_FETCH_USAGE,
            exit::INTERRUPTED,
            exit::STANDBY_RETRY,
        ];
        for ours in [
            exit_status::BEHIND,
            exit_status::PAUSED_AT_TARGET,
            exit_status::NOT_RUNNING,
            exit_status::NOT_A_DATA_DIRECTORY,
            exit_status::NOT_IN_RECOVERY,
        ] {
            assert!(
                !failures.contains(&ours),
                "{ours} is already a failure's status"
            );
        }
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_samples() {
        let text = prometheus(&report(), 1_042);
        let label = r#"{pgdata="/srv/pg \"a\""}"#;
        for sample in [
            "wale_server_running 1",
            "wale_in_recovery 1",
            "wale_caught_up 0",
            "wale_paused_at_target 0",
            "wale_lag_segments 1",
            "wale_lag_bytes 33554336",
            "wale_last_wal_fetch_error_age_seconds 42",
        ] {
            let (name, value) = sample.split_once(' ').unwrap();
            assert!(
                text.contains(&format!("\n{name}{label} {value}\n")),
                "{sample} missing:\n{text}"
            );
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        let stopped = Report {
            running: false,
            in_recovery: None,
            lag_segments: None,
            lag_bytes: None,
            last_error: None,
            last_error_unix_time: None,
            ..report()
        };
        let text = prometheus(&stopped, 1_042);
        assert!(text.contains("wale_server_running{"), "{text}");
        for absent in [
            "wale_in_recovery{",
            "wale_lag_segments{",
            "wale_lag_bytes{",
            "wale_last_wal_fetch_error_age_seconds{",
        ] {
            assert!(
                !text.contains(absent),
                "{absent} has no value to show:\n{text}"
            );
        }
    }

    #[test]
    fn missing_and_foreign_directories_are_not_data_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = not_a_data_directory(&dir.path().join("nope")).unwrap();
        assert!(missing.ends_with("nope: no such directory"), "{missing}");
        let empty = not_a_data_directory(dir.path()).unwrap();
        assert!(empty.contains("not a PostgreSQL data directory"), "{empty}");
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), b"").unwrap();
        assert_eq!(not_a_data_directory(dir.path()), None);
    }
}
