//! `wale restore`'s arguments made into a plan once, the way ripgrep turns its low-level
//! arguments into `HiArgs`: the recovery target, the timeline, the settings and the paths,
//! checked and typed before anything is read or written. Every later step (preflight,
//! fetch, configuration, start) reads the plan, never the argument strings.
//!
//! Also restore's path rules: where the envdir and the tablespaces go beside a data
//! directory (`main` shares the envdir's, to find the archive for `status` and `promote`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::backups::Query;
use crate::cli::RestoreArgs;
use crate::error::Error;
use crate::tablespaces;
use crate::wal::Lsn;

/// `wale restore`'s arguments, checked and typed.
#[derive(Debug)]
pub struct RestorePlan {
    /// The data directory to create, absolute.
    pub(crate) pgdata: PathBuf,
    /// Which backup to restore.
    pub(crate) backup: BackupChoice,
    /// A standby, or a recovery that ends (at a target, or at the end of the archive).
    pub(crate) recovery: Recovery,
    /// `--target-timeline`.
    pub(crate) timeline: TimelineTarget,
    /// Whether WAL also comes through wale's WAL stream (a standby, or a recovery to the
    /// end of the archive; not `--no-wal-stream`).
    pub(crate) wal_stream: bool,
    /// `--set NAME=VALUE`, names checked and lower-cased, values trimmed, in order.
    pub(crate) settings: Vec<(String, String)>,
    /// `--tablespace OID=PATH`, paths absolute.
    pub(crate) tablespaces: Vec<(String, PathBuf)>,
    /// The envdir `restore_command` reads.
    pub(crate) envdir: Envdir,
    /// The archive settings in effect: what the written envdir holds, and the key files
    /// the server's owner must be able to read.
    pub(crate) archive_settings: Vec<(String, String)>,
    /// `--cluster NAME`, a valid Debian cluster name.
    pub(crate) cluster: Option<String>,
    /// `--owner`, as given (whether it exists is preflight's question).
    pub(crate) owner: String,
    /// `--port`.
    pub(crate) port: u16,
    /// `--start`.
    pub(crate) start: bool,
    /// `--pool-size`.
    pub(crate) pool_size: Option<u16>,
    /// `--pg-bin`.
    pub(crate) pg_bin: Option<PathBuf>,
    /// What decides the restore's result, recorded in the data directory and compared
    /// when the same command is run again: every argument but `--start`, `--pool-size`
    /// and `--pg-bin` (as given), and the archive.
    pub(crate) request: serde_json::Value,
}

/// Which backup `restore` restores.
#[derive(Debug)]
pub(crate) enum BackupChoice {
    /// A name, or `LATEST` (also when none is given without `--target-time`).
    Query(Query),
    /// No name but `--target-time`: the newest backup that finished before it.
    StoppedBefore(TargetTime),
}

/// `--target-time`: as given (what PostgreSQL reads), and the instant it names.
#[derive(Debug, Clone)]
pub(crate) struct TargetTime {
    pub(crate) text: String,
    pub(crate) at: SystemTime,
}

/// How recovery goes on.
#[derive(Debug)]
pub(crate) enum Recovery {
    /// `--standby`: a hot standby following the archive without end.
    Standby,
    /// Recovery to the end of the archive, then the server is promoted.
    ToEnd,
    /// Recovery to a target, then `action` (PostgreSQL's default: pause).
    ToTarget {
        target: RecoveryTarget,
        action: Option<TargetAction>,
    },
}

impl Recovery {
    /// Whether this makes a standby.
    pub(crate) fn is_standby(&self) -> bool {
        matches!(self, Recovery::Standby)
    }
}

/// One of the `--target-*` options.
#[derive(Debug)]
pub(crate) enum RecoveryTarget {
    Time(TargetTime),
    Lsn(Lsn),
    Name(String),
    Xid(String),
    Immediate,
}

impl RecoveryTarget {
    /// The recovery setting PostgreSQL reads for this target, and its value.
    pub(crate) fn setting(&self) -> (&'static str, String) {
        match self {
            RecoveryTarget::Time(time) => ("recovery_target_time", time.text.clone()),
            RecoveryTarget::Lsn(lsn) => ("recovery_target_lsn", lsn.to_string()),
            RecoveryTarget::Name(name) => ("recovery_target_name", name.clone()),
            RecoveryTarget::Xid(xid) => ("recovery_target_xid", xid.clone()),
            RecoveryTarget::Immediate => ("recovery_target", "immediate".to_string()),
        }
    }
}

/// `--target-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    /// The value of `recovery_target_action`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// `--target-timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimelineTarget {
    Latest,
    Current,
    Number(u32),
}

impl std::fmt::Display for TimelineTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimelineTarget::Latest => f.write_str("latest"),
            TimelineTarget::Current => f.write_str("current"),
            TimelineTarget::Number(n) => write!(f, "{n}"),
        }
    }
}

/// The envdir `restore_command` reads.
#[derive(Debug)]
pub(crate) enum Envdir {
    /// `--envdir`, absolute: read as it is.
    Given(PathBuf),
    /// None given: wale writes the archive settings in effect into this directory beside
    /// the data directory ([`default_envdir`]).
    Written(PathBuf),
}

impl RestorePlan {
    /// Checks and types `args`. `archive` is the archive's URL, `envdir` the `--envdir`
    /// given and `archive_settings` the settings in effect
    /// ([`crate::config::envdir_settings`]).
    pub fn new(
        args: &RestoreArgs,
        archive: &str,
        envdir: Option<&Path>,
        archive_settings: Vec<(String, String)>,
    ) -> Result<RestorePlan, Error> {
        let pgdata = absolute(&args.pgdata)?;
        let envdir = match envdir {
            Some(dir) => Envdir::Given(absolute(dir)?),
            None => Envdir::Written(default_envdir(&pgdata)),
        };
        let request = request_of(args, archive, &pgdata, &envdir);
        let settings = parse_settings(&args.settings)?;
        let timeline = parse_timeline(&args.target_timeline)?;
        let recovery = recovery_of(args)?;
        let wal_stream =
            !args.no_wal_stream && matches!(recovery, Recovery::Standby | Recovery::ToEnd);
        let backup = match (&args.backup_name, &recovery) {
            (
                None,
                Recovery::ToTarget {
                    target: RecoveryTarget::Time(time),
                    ..
                },
            ) => BackupChoice::StoppedBefore(time.clone()),
            (name, _) => {
                BackupChoice::Query(Query::parse(Some(name.as_deref().unwrap_or("LATEST")))?)
            }
        };
        let tablespaces = args
            .tablespaces
            .iter()
            .map(|mapping| {
                let (oid, path) = tablespaces::parse_mapping(mapping)?;
                Ok((oid, absolute(&path)?))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if let Some(cluster) = &args.cluster {
            check_cluster_name(cluster)?;
        }
        Ok(RestorePlan {
            pgdata,
            backup,
            recovery,
            timeline,
            wal_stream,
            settings,
            tablespaces,
            envdir,
            archive_settings,
            cluster: args.cluster.clone(),
            owner: args.owner.clone(),
            port: args.port,
            start: args.start,
            pool_size: args.pool_size,
            pg_bin: args.pg_bin.clone(),
            request,
        })
    }
}

/// The restore's request: every argument but `--start`, `--pool-size` and `--pg-bin`, as
/// given, and the archive (the record an earlier run left is compared with it).
fn request_of(
    args: &RestoreArgs,
    archive: &str,
    pgdata: &Path,
    envdir: &Envdir,
) -> serde_json::Value {
    let envdir = match envdir {
        Envdir::Given(dir) => Some(dir),
        Envdir::Written(_) => None,
    };
    serde_json::json!({
        "archive": archive,
        "pgdata": pgdata,
        "backup": args.backup_name,
        "standby": args.standby,
        "no_wal_stream": args.no_wal_stream,
        "port": args.port,
        "tablespaces": args.tablespaces,
        "settings": args.settings,
        "cluster": args.cluster,
        "owner": args.owner,
        "envdir": envdir,
        "target_time": args.target_time,
        "target_lsn": args.target_lsn,
        "target_name": args.target_name,
        "target_xid": args.target_xid,
        "target_immediate": args.target_immediate,
        "target_action": args.target_action,
        "target_timeline": args.target_timeline,
    })
}

/// `--set NAME=VALUE` pairs, names checked.
pub(super) fn parse_settings(raw: &[String]) -> Result<Vec<(String, String)>, Error> {
    raw.iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::Usage(format!("--set {pair:?}: expected NAME=VALUE")))?;
            let name = name.trim().to_ascii_lowercase();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            if !valid {
                return Err(Error::Usage(format!(
                    "--set {pair:?}: {name:?} is not a setting name"
                )));
            }
            Ok((name, value.trim().to_string()))
        })
        .collect()
}

/// `--target-timeline`: latest, current or a timeline number.
fn parse_timeline(timeline: &str) -> Result<TimelineTarget, Error> {
    match timeline {
        "latest" => Ok(TimelineTarget::Latest),
        "current" => Ok(TimelineTarget::Current),
        number => match number.parse::<u32>() {
            Ok(n) if n > 0 => Ok(TimelineTarget::Number(n)),
            _ => Err(Error::Usage(format!(
                "--target-timeline {timeline:?}: expected latest, current or a timeline number"
            ))),
        },
    }
}

/// `--standby`, the `--target-*` options (clap lets one at most through) and
/// `--target-action`.
fn recovery_of(args: &RestoreArgs) -> Result<Recovery, Error> {
    let target = if let Some(lsn) = &args.target_lsn {
        Some(RecoveryTarget::Lsn(Lsn::parse(lsn).ok_or_else(|| {
            Error::Usage(format!(
                "--target-lsn {lsn:?}: expected a WAL position such as 0/3000060"
            ))
        })?))
    } else if let Some(time) = &args.target_time {
        let at = crate::time::parse_timestamp(time).ok_or_else(|| {
            Error::Usage(format!(
                "--target-time {time:?}: expected a time such as '2026-11-30 10:00:00+00'"
            ))
        })?;
        Some(RecoveryTarget::Time(TargetTime {
            text: time.clone(),
            at,
        }))
    } else if let Some(name) = &args.target_name {
        Some(RecoveryTarget::Name(name.clone()))
    } else if let Some(xid) = &args.target_xid {
        Some(RecoveryTarget::Xid(xid.clone()))
    } else if args.target_immediate {
        Some(RecoveryTarget::Immediate)
    } else {
        None
    };
    let action = args
        .target_action
        .as_deref()
        .map(|action| match action {
            "pause" => Ok(TargetAction::Pause),
            "promote" => Ok(TargetAction::Promote),
            "shutdown" => Ok(TargetAction::Shutdown),
            other => Err(Error::Usage(format!(
                "--target-action {other:?}: expected pause, promote or shutdown"
            ))),
        })
        .transpose()?;
    match (args.standby, target, action) {
        (true, Some(_), _) => Err(Error::Usage(
            "--standby follows the archive without end; a recovery target (--target-*) makes no sense with it".into(),
        )),
        (_, None, Some(_)) => Err(Error::Usage(
            "--target-action needs a recovery target (--target-time, --target-lsn, --target-name, --target-xid or --target-immediate)".into(),
        )),
        (true, None, None) => Ok(Recovery::Standby),
        (false, None, None) => Ok(Recovery::ToEnd),
        (false, Some(target), action) => Ok(Recovery::ToTarget { target, action }),
    }
}

/// A Debian cluster name, as `pg_createcluster` accepts one.
fn check_cluster_name(cluster: &str) -> Result<(), Error> {
    let valid = !cluster.is_empty()
        && cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !cluster.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--cluster {cluster:?}: not a cluster name"
        )))
    }
}

/// `path`, relative to the current directory unless absolute.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let here = std::env::current_dir()
        .map_err(|e| Error::local(".", "cannot read the current directory", e))?;
    Ok(here.join(path))
}

/// Where the archive settings for `restore_command` go when no `--envdir` is given:
/// `<PGDATA>.wale-env`, outside the data directory.
pub fn default_envdir(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.as_os_str().to_os_string();
    name.push(".wale-env");
    PathBuf::from(name)
}

/// Where tablespaces go unless mapped: `<PGDATA>_tablespaces/`.
pub(crate) fn default_tablespace_root(pgdata: &Path) -> PathBuf {
    let mut name = pgdata.as_os_str().to_os_string();
    name.push("_tablespaces");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(line: &[&str]) -> Result<RestorePlan, Error> {
        let mut args = vec!["wale", "restore", "/srv/pg"];
        args.extend_from_slice(line);
        let cli = crate::cli::Cli::try_parse_from(args).unwrap();
        let crate::cli::Command::Restore(args) = cli.command else {
            panic!("not restore")
        };
        RestorePlan::new(&args, "s3://b/p", None, Vec::new())
    }

    #[test]
    fn arguments_become_a_typed_plan() {
        let p = plan(&["--target-lsn", "0/3a", "--target-action", "promote"]).unwrap();
        let Recovery::ToTarget { target, action } = &p.recovery else {
            panic!("{p:?}")
        };
        assert_eq!(
            target.setting(),
            ("recovery_target_lsn", "0/3A".to_string())
        );
        assert_eq!(*action, Some(TargetAction::Promote));
        assert_eq!(p.timeline, TimelineTarget::Latest);
        assert!(matches!(p.backup, BackupChoice::Query(Query::Latest)));
        assert!(
            matches!(&p.envdir, Envdir::Written(dir) if dir == Path::new("/srv/pg.wale-env")),
            "{p:?}"
        );
        assert_eq!(p.request["target_lsn"], "0/3a");

        let p = plan(&["--target-time", "2026-11-30 10:00:00+00"]).unwrap();
        assert!(matches!(p.backup, BackupChoice::StoppedBefore(_)));
        let p = plan(&["--standby", "--target-timeline", "3"]).unwrap();
        assert!(p.recovery.is_standby());
        assert_eq!(p.timeline.to_string(), "3");
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_read() {
        for (line, needle) in [
            (&["--target-timeline", "sideways"][..], "--target-timeline"),
            (&["--target-timeline", "0"], "--target-timeline"),
            (&["--target-lsn", "3000060"], "expected a WAL position"),
            (&["--target-time", "yesterday"], "expected a time"),
            (&["--standby", "--target-name", "x"], "makes no sense"),
            (&["--target-action", "pause"], "needs a recovery target"),
            (&["--set", "novalue"], "expected NAME=VALUE"),
            (&["--tablespace", "x=/t"], "expected OID=PATH"),
            (&["--cluster", ".hidden"], "not a cluster name"),
            (&["not_a_backup"], "invalid backup query"),
        ] {
            let err = plan(line).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{line:?}: {err}");
            assert!(err.to_string().contains(needle), "{line:?}: {err}");
        }
    }
}
