//! The command line, WAL-E's subcommands, flags and defaults, declared with clap.
//! Parsing only: no environment, no I/O.

use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Restore PostgreSQL from WAL-E archives: a native, drop-in replacement for WAL-E's
/// restore side (`wal-fetch`, `backup-fetch`, `backup-list`), and `restore`, `status`,
/// `promote` from an archive to a running standby and cutover.
#[derive(Debug, Parser)]
#[command(
    name = "wale",
    version,
    after_help = "Configuration comes from the environment as for WAL-E (WALE_S3_PREFIX or \
WALE_FILE_PREFIX, WALE_S3_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
AWS_SESSION_TOKEN/AWS_SECURITY_TOKEN, AWS_INSTANCE_PROFILE, WALE_RETRIES), optionally read \
from an envdir directory with --envdir.\n\nExit status: 0 success; 1 not in the archive; \
2 usage or configuration error; 200 storage unavailable after retries; 201 storage refused \
(credentials, bucket, region); 202 corrupt object; 203 local file error or server failure; \
204 usage or configuration error under wal-fetch (2 would let PostgreSQL promote). Under a \
standby (standby.signal), wal-fetch failures exit 1 so that the standby retries. status: \
0 caught up, 3 behind, 4 paused at the recovery target, 5 not running, 6 not a data \
directory, 7 not in recovery."
)]
pub struct Cli {
    /// The options every subcommand takes, before or after it.
    #[command(flatten)]
    pub globals: GlobalFlags,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every subcommand takes that are not about storage.
const GLOBAL: &str = "Global options";
/// The help heading of the storage, credential and decoding options every subcommand
/// takes: after the subcommand's own options.
const STORAGE: &str = "Storage options";

/// The global options, declared once: parsing, `Config::resolve` and the prefetcher's
/// relaunch ([`relaunch_args`]) all read this one declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct GlobalFlags {
    /// Read environment variables from DIR first, one variable per file, the way
    /// daemontools `envdir DIR wale …` would (so restore_command needs no daemontools).
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    pub envdir: Option<PathBuf>,

    /// Only log warnings and errors.
    #[arg(long, global = true, conflicts_with = "verbose", help_heading = GLOBAL)]
    pub terse: bool,

    /// Also log debug lines: each retried storage attempt, repeated "not found" answers.
    #[arg(short = 'v', long, global = true, help_heading = GLOBAL)]
    pub verbose: bool,

    /// Storage prefix on the local file system, e.g. file:///var/backups/wal-e.
    #[arg(long, global = true, value_name = "URL", help_heading = STORAGE)]
    pub file_prefix: Option<String>,

    /// Google Cloud Storage prefix, e.g. gs://bucket/path/to/archive.
    #[arg(long, global = true, value_name = "URL", help_heading = STORAGE)]
    pub gs_prefix: Option<String>,

    /// S3 prefix, e.g. s3://bucket/path/to/archive.
    #[arg(long, global = true, value_name = "URL", help_heading = STORAGE)]
    pub s3_prefix: Option<String>,

    /// OpenStack Swift prefix, e.g. swift://container/path/to/archive (settings in
    /// SWIFT_AUTHURL, SWIFT_USER, SWIFT_PASSWORD, …).
    #[arg(long, global = true, value_name = "URL", help_heading = STORAGE)]
    pub swift_prefix: Option<String>,

    /// Azure Blob Storage prefix, e.g. wabs://container/path/to/archive.
    #[arg(long, global = true, value_name = "URL", help_heading = STORAGE)]
    pub wabs_prefix: Option<String>,

    /// Azure storage account (also WABS_ACCOUNT_NAME).
    #[arg(short = 'a', long, global = true, value_name = "NAME", help_heading = STORAGE)]
    pub wabs_account_name: Option<String>,

    /// AWS access key id (the secret always comes from AWS_SECRET_ACCESS_KEY).
    #[arg(short = 'k', long, global = true, value_name = "ID", help_heading = STORAGE)]
    pub aws_access_key_id: Option<String>,

    /// Use the EC2 instance profile's credentials (also AWS_INSTANCE_PROFILE=true).
    #[arg(long, global = true, conflicts_with = "aws_access_key_id", help_heading = STORAGE)]
    pub aws_instance_profile: bool,

    /// Decrypt GPG-encrypted objects with `gpg -d` as WAL-E does (also WALE_GPG_KEY_ID);
    /// WALE_PGP_KEY_PATH decrypts in process instead.
    #[arg(long, global = true, value_name = "KEY_ID", help_heading = STORAGE)]
    pub gpg_key_id: Option<String>,

    /// Also decode objects that hold several concatenated lzop members (lzop itself
    /// warns about them and WAL-E refuses them).
    #[arg(long, global = true, help_heading = STORAGE)]
    pub allow_concatenated_lzop: bool,
}

/// A parsed command line and the global options it gave, as arguments for a child `wale`.
pub struct Parsed {
    /// The command line.
    pub cli: Cli,
    /// See [`relaunch_args`].
    pub relaunch: Vec<std::ffi::OsString>,
}

/// A command line clap refused (or `--help` and `--version`, which clap answers the same
/// way), and whether it was `wal-fetch`'s.
#[derive(Debug)]
pub struct Refused {
    /// clap's answer, to print.
    pub error: clap::Error,
    /// The line names `wal-fetch` as its subcommand: a refusal there must stop archive
    /// recovery like `wal-fetch`'s other usage errors ([`crate::error::exit::WAL_FETCH_USAGE`]).
    pub wal_fetch: bool,
}

/// Parses the process's command line.
pub fn parse() -> Result<Parsed, Refused> {
    parse_from(std::env::args_os())
}

/// Parses a command line. The clap definition is built once, for parsing and for the
/// relaunch arguments (every `restore_command` call pays for it).
pub fn parse_from<I, T>(args: I) -> Result<Parsed, Refused>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = help_about_help(args);
    let refused = |error| Refused {
        error,
        wal_fetch: names_wal_fetch(&args),
    };
    if let Some(parsed) = parse_wal_fetch(&args) {
        return Ok(parsed);
    }
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(&args).map_err(refused)?;
    let cli = Cli::from_arg_matches(&matches).map_err(refused)?;
    let relaunch = relaunch_args(&command, &matches);
    Ok(Parsed { cli, relaunch })
}

/// A `wal-fetch` command line parsed against the global options and `wal-fetch` alone:
/// PostgreSQL starts it once per segment, and building the whole command tree (every
/// subcommand's options) is most of the parsing's cost. Same declarations, so the same
/// result; `None` (the whole tree decides, with its messages) for anything else or any
/// error.
fn parse_wal_fetch(args: &[std::ffi::OsString]) -> Option<Parsed> {
    if !args.iter().skip(1).any(|a| a == "wal-fetch") {
        return None;
    }
    let mut command = wal_fetch_command();
    let matches = command.try_get_matches_from_mut(args).ok()?;
    let cli = Cli::from_arg_matches(&matches).ok()?;
    let relaunch = relaunch_args(&command, &matches);
    Some(Parsed { cli, relaunch })
}

/// The global options and `wal-fetch` alone, as [`Cli`] declares them.
fn wal_fetch_command() -> clap::Command {
    let wal_fetch = WalFetchArgs::augment_args(clap::Command::new("wal-fetch"));
    GlobalFlags::augment_args(clap::Command::new("wale")).subcommand(wal_fetch)
}

/// Whether `args` name `wal-fetch` as their subcommand, asked of clap with its errors
/// ignored (an unknown flag, a missing argument): an argument that only reads
/// "wal-fetch" (a directory, an option's value) does not count.
fn names_wal_fetch(args: &[std::ffi::OsString]) -> bool {
    Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .is_ok_and(|matches| matches.subcommand_name() == Some("wal-fetch"))
}

/// `wale help [COMMAND] --help` asks for help as plainly as `wale [COMMAND] --help`, which
/// clap's `help` subcommand would refuse: it becomes that.
fn help_about_help<I, T>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let is_help_flag = |a: &std::ffi::OsString| a == "--help" || a == "-h";
    if args.get(1).is_some_and(|a| a == "help") && args[2..].iter().any(is_help_flag) {
        args.remove(1);
        args.retain(|a| !is_help_flag(a));
        args.push("--help".into());
    }
    args
}

/// Every global option given on the command line, as arguments for a child `wale` (the
/// prefetcher) so it reads the same configuration. Derived from the declaration: a new
/// global option is passed on without being listed anywhere.
fn relaunch_args(command: &clap::Command, matches: &ArgMatches) -> Vec<std::ffi::OsString> {
    let mut args = Vec::new();
    for arg in command.get_arguments().filter(|a| a.is_global_set()) {
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let long = arg.get_long().expect("global options have a long name");
        if arg.get_action().takes_values() {
            for value in matches.get_raw(id).into_iter().flatten() {
                let mut flag = std::ffi::OsString::from(format!("--{long}="));
                flag.push(value);
                args.push(flag);
            }
        } else {
            args.push(format!("--{long}").into());
        }
    }
    args
}

/// WAL-E's restore-side subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Restore a base backup into a data directory: backup-fetch DIR NAME|LATEST.
    BackupFetch(BackupFetchArgs),
    /// List complete base backups (tab-separated like WAL-E, or JSON).
    BackupList(BackupListArgs),
    /// Fetch one WAL file from the archive: use as restore_command = 'wale wal-fetch "%f" "%p"'.
    WalFetch(WalFetchArgs),
    /// Run the background prefetcher for a WAL directory (wal-fetch starts it itself).
    WalPrefetch(WalPrefetchArgs),
    /// Serve a standby's WAL stream from the archive (wal-fetch starts it itself).
    #[command(hide = true)]
    WalStream(WalStreamArgs),
    /// Restore a backup into a ready-to-start server: checks, fetch, layout, configuration,
    /// recovery settings; --standby for a hot standby following the archive, --start to
    /// start it.
    Restore(Box<RestoreArgs>),
    /// Where a restored server stands against the archive: replay position, lag, caught up.
    #[command(
        after_help = "Exit status (for scripts, as pg_isready's): 0 caught up; 3 in recovery, not \
caught up (behind, catching up, starting up, paused by request, archive not reachable); 4 paused \
at the recovery target; 5 no server running (or not answering); 6 missing or not a data \
directory; 7 running, not in recovery (promoted). Errors keep wale's statuses (2, 200-203)."
    )]
    Status(StatusArgs),
    /// Promote a caught-up standby to a writable primary.
    Promote(PromoteArgs),
    /// Check that a backup and the WAL after it can be restored, without restoring:
    /// every partition read through, every needed segment present on the right timeline.
    Verify(VerifyArgs),
    /// Print wale's version.
    Version,
    /// Write the man page and shell completions into a directory (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// `verify [BACKUP_NAME|LATEST|--all] [--wal-only|--backup-only] [--json]`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The backup to verify: LATEST (the default) or a name.
    #[arg(conflicts_with = "all")]
    pub backup_name: Option<String>,

    /// Verify every complete backup (the WAL chain from the oldest).
    #[arg(long)]
    pub all: bool,

    /// Only the WAL chain: listings and history files, no partition is read.
    #[arg(long, conflicts_with = "backup_only")]
    pub wal_only: bool,

    /// Only the backup's partitions.
    #[arg(long)]
    pub backup_only: bool,

    /// Also download every segment recovery needs and check it: lzop checksums, its size,
    /// its first page header (magic, timeline, address) and the backup's system identifier.
    #[arg(long, conflicts_with = "backup_only")]
    pub wal_deep: bool,

    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// How many partitions to read at once.
    #[arg(short = 'p', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pool_size: Option<u16>,
}

/// `backup-fetch PG_CLUSTER_DIRECTORY BACKUP_NAME|LATEST [options]`.
#[derive(Debug, Args)]
pub struct BackupFetchArgs {
    /// The data directory to restore into (created if missing; must be empty unless
    /// --overwrite).
    pub pg_cluster_directory: PathBuf,

    /// A backup name such as base_000000010000000000000002_00000040, or LATEST.
    pub backup_name: String,

    /// How many partitions to download and extract at once [default: 4, or the number of
    /// CPUs if larger].
    #[arg(short = 'p', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pool_size: Option<u16>,

    /// Restore tablespaces into real directories under pg_tblspc/ instead of requiring
    /// pg_tblspc/OID symlinks.
    #[arg(long)]
    pub blind_restore: bool,

    /// Create the tablespace links from a JSON spec FILE, or from the backup's own spec
    /// (SOURCE); always restores into PG_CLUSTER_DIRECTORY.
    #[arg(long, value_name = "FILE|SOURCE")]
    pub restore_spec: Option<String>,

    /// Restore tablespace OID into PATH (created if needed) and link pg_tblspc/OID to it;
    /// repeat for several.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    pub tablespaces: Vec<String>,

    /// Keep a pg_wal (pg_xlog) symlink from the source machine instead of restoring an
    /// empty directory in its place.
    #[arg(long)]
    pub keep_wal_link: bool,

    /// Restore into a non-empty directory, replacing the files the backup holds (other
    /// files are kept).
    #[arg(long)]
    pub overwrite: bool,
}

/// `restore PGDATA [BACKUP_NAME|LATEST] [options]`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The data directory to create (absent or empty).
    pub pgdata: PathBuf,

    /// A backup name, or LATEST [default: LATEST, or with --target-time the newest backup
    /// that finished before it].
    pub backup_name: Option<String>,

    /// Make a hot standby that follows the archive (standby.signal) instead of recovering
    /// to the end of the archive (or the target) and stopping there.
    #[arg(long)]
    pub standby: bool,

    /// Take WAL only through restore_command, without wale's WAL stream (a local
    /// replication socket a standby, or a recovery to the end of the archive, streams the
    /// archive from, while restore_command stays the fallback).
    #[arg(long)]
    pub no_wal_stream: bool,

    /// Start the server once restored, as the data directory's owner, and wait until it
    /// accepts connections.
    #[arg(long)]
    pub start: bool,

    /// The port the restored server listens on.
    #[arg(long, default_value_t = 5432, value_name = "N")]
    pub port: u16,

    /// The directory of the server binaries (postgres, pg_ctl, psql) to use [default:
    /// /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, then PATH].
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// Restore tablespace OID into PATH instead of the default beside PGDATA; repeat for
    /// several.
    #[arg(long = "tablespace", value_name = "OID=PATH")]
    pub tablespaces: Vec<String>,

    /// Add or override a setting in the postgresql.conf wale writes; repeat for several.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,

    /// Register the restored server as Debian cluster N/NAME (postgresql-common), with
    /// its configuration under /etc/postgresql/N/NAME.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// When running as root: the user who will own the data directory and run the server.
    #[arg(long, default_value = "postgres", value_name = "USER")]
    pub owner: String,

    /// How many partitions to download and extract at once.
    #[arg(short = 'p', long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub pool_size: Option<u16>,

    /// Recover up to this time (recovery_target_time), e.g. '2026-11-30 10:00:00+00'.
    #[arg(long, value_name = "T", group = "target")]
    pub target_time: Option<String>,

    /// Recover up to this WAL position (recovery_target_lsn), e.g. 0/3000060.
    #[arg(long, value_name = "L", group = "target")]
    pub target_lsn: Option<String>,

    /// Recover up to this restore point (recovery_target_name), made with
    /// pg_create_restore_point().
    #[arg(long, value_name = "N", group = "target")]
    pub target_name: Option<String>,

    /// Recover up to this transaction id (recovery_target_xid).
    #[arg(long, value_name = "X", group = "target")]
    pub target_xid: Option<String>,

    /// Recover only until the backup is consistent (recovery_target = 'immediate').
    #[arg(long, group = "target")]
    pub target_immediate: bool,

    /// What to do at the target: pause (PostgreSQL's default), promote or shutdown.
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "promote", "shutdown"])]
    pub target_action: Option<String>,

    /// Which timeline to follow: latest (default), current, or a number.
    #[arg(long, default_value = "latest", value_name = "TLI")]
    pub target_timeline: String,
}

/// `generate DIR`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write the man pages (`wale.1`, `wale-SUBCOMMAND.1`) and `completions/`
    /// (bash, zsh, fish).
    pub out_dir: PathBuf,
}

/// Writes the man pages, `wale.1` and one `wale-SUBCOMMAND.1` per subcommand with its
/// options and the global ones (every page `wale.1` refers to; clap's generator, without
/// the `help` subcommand), and bash, zsh and fish completions, all from the one clap
/// definition, into `dir`. Returns the man pages' file names.
pub fn generate(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    use clap_complete::Shell;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), dir)?;
    let pages = std::iter::once("wale.1".to_string())
        .chain(
            command
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .map(|sub| format!("wale-{}.1", sub.get_name())),
        )
        .collect();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "wale", &completions)?;
    }
    Ok(pages)
}

/// `status PGDATA [--json | --format FORMAT]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The data directory of the restored server.
    pub pgdata: PathBuf,

    /// Print one JSON object instead of text (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// What to print: text, json, or prometheus (the text exposition format, for the node
    /// exporter's textfile collector).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<StatusFormat>,

    /// The directory of the server binaries (psql) [default: found as for restore].
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// How `status` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    /// Lines for people.
    Text,
    /// One JSON object.
    Json,
    /// Prometheus' text exposition format: gauges labelled with the data directory.
    Prometheus,
}

impl StatusArgs {
    /// The format asked for: `--format`, else `--json`, else text.
    pub fn output_format(&self) -> StatusFormat {
        match (self.format, self.json) {
            (Some(format), _) => format,
            (None, true) => StatusFormat::Json,
            (None, false) => StatusFormat::Text,
        }
    }
}

/// `promote PGDATA [--force]`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The data directory of the standby.
    pub pgdata: PathBuf,

    /// Promote even when the standby has not caught up with the archive.
    #[arg(long)]
    pub force: bool,

    /// The directory of the server binaries (pg_ctl, psql) [default: found as for restore].
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// `backup-list [QUERY] [--detail] [--json]`.
#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// LATEST, or a backup name such as base_000000010000000000000002_00000040.
    pub query: Option<String>,

    /// Also read each backup's sentinel: expanded size and stop position.
    #[arg(long)]
    pub detail: bool,

    /// Print a JSON array instead of WAL-E's tab-separated table.
    #[arg(long)]
    pub json: bool,
}

/// `wal-fetch WAL_SEGMENT WAL_DESTINATION [--prefetch N]`.
#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name PostgreSQL asks for (%f): a segment, .history, .backup or .partial.
    pub wal_segment: String,

    /// Where to write it (%p): written whole or not at all, and fsynced unless it is
    /// PostgreSQL's RECOVERYXLOG or RECOVERYHISTORY (PostgreSQL fsyncs what it keeps).
    pub wal_destination: PathBuf,

    /// How many following segments to keep prefetched in the background (0: none).
    #[arg(short = 'p', long, default_value_t = 8, value_name = "N")]
    pub prefetch: u32,
}

/// `wal-prefetch BASE_DIRECTORY SEGMENT [--prefetch N]`.
#[derive(Debug, Args)]
pub struct WalPrefetchArgs {
    /// The WAL directory whose .wal-e/prefetch area to fill (PostgreSQL's pg_wal).
    pub base_directory: PathBuf,

    /// The first segment to prefetch.
    pub segment: String,

    /// How many segments to keep prefetched ahead of recovery.
    #[arg(short = 'p', long = "prefetch", default_value_t = 8, value_name = "N")]
    pub window: u32,
}

/// Arguments of `wal-stream`.
#[derive(Debug, Args)]
pub struct WalStreamArgs {
    /// The standby's data directory (set up by `restore --standby`).
    pub pgdata: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
        wal_fetch_command().debug_assert();
    }

    /// Every global option, given alone before or after the subcommand, reaches the
    /// relaunched prefetcher with the same value.
    #[test]
    fn help_about_help_is_the_help_it_asks_for() {
        let help = |args: &[&str]| match parse_from(args) {
            Err(e) => (e.error.kind(), e.error.to_string()),
            Ok(_) => panic!("{args:?} parsed as a command"),
        };
        let (kind, top) = help(&["wale", "help", "--help"]);
        assert_eq!(kind, clap::error::ErrorKind::DisplayHelp);
        assert!(
            top.contains("backup-fetch") && top.contains("restore"),
            "{top}"
        );
        let (kind, restore) = help(&["wale", "help", "restore", "-h"]);
        assert_eq!(kind, clap::error::ErrorKind::DisplayHelp);
        assert!(restore.contains("--standby"), "{restore}");
    }

    /// The short path for `wal-fetch` parses exactly as the whole tree does (the same
    /// command, options and relaunch arguments), and leaves to the whole tree every line
    /// that is not a valid `wal-fetch`.
    #[test]
    fn wal_fetch_parses_as_the_whole_tree_does() {
        let lines: [&[&str]; 4] = [
            &[
                "wale",
                "wal-fetch",
                "000000010000000000000003",
                "pg_wal/RECOVERYXLOG",
            ],
            &[
                "wale",
                "--terse",
                "--envdir=/e",
                "wal-fetch",
                "--prefetch",
                "0",
                "a",
                "b",
            ],
            &[
                "wale",
                "wal-fetch",
                "a",
                "b",
                "--s3-prefix",
                "s3://x/y",
                "--verbose",
            ],
            &[
                "wale",
                "--gpg-key-id",
                "k",
                "wal-fetch",
                "a",
                "b",
                "--envdir",
                "/e",
            ],
        ];
        for line in lines {
            let args: Vec<std::ffi::OsString> = line.iter().map(Into::into).collect();
            let short = parse_wal_fetch(&args).unwrap_or_else(|| panic!("{line:?}"));
            let mut command = Cli::command();
            let matches = command.try_get_matches_from_mut(&args).unwrap();
            let whole = Cli::from_arg_matches(&matches).unwrap();
            assert_eq!(format!("{:?}", short.cli), format!("{whole:?}"), "{line:?}");
            assert_eq!(
                short.relaunch,
                relaunch_args(&command, &matches),
                "{line:?}"
            );
        }
        let refused: [&[&str]; 4] = [
            &["wale", "wal-fetch", "a"],
            &["wale", "wal-fetch", "--help"],
            &["wale", "backup-fetch", "wal-fetch", "LATEST"],
            &["wale", "wal-fetch", "a", "b", "--no-such-flag"],
        ];
        for line in refused {
            let args: Vec<std::ffi::OsString> = line.iter().map(Into::into).collect();
            assert!(parse_wal_fetch(&args).is_none(), "{line:?}");
        }
    }

    #[test]
    fn restore_help_puts_its_own_options_first_and_storage_under_its_heading() {
        let help = match parse_from(["wale", "restore", "--help"]) {
            Err(e) => e.error.to_string(),
            Ok(_) => panic!("--help parsed as a command"),
        };
        let at = |needle: &str| {
            help.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing:\n{help}"))
        };
        assert!(at("--standby") < at("\nGlobal options:"), "{help}");
        assert!(at("\nGlobal options:") < at("--envdir"), "{help}");
        assert!(at("\nStorage options:") < at("--s3-prefix"), "{help}");
        assert!(at("--target-timeline") < at("\nGlobal options:"), "{help}");
        let own = &help[..at("\nGlobal options:")];
        assert!(
            !own.contains("--s3-prefix") && !own.contains("--gpg-key-id"),
            "{own}"
        );
    }

    #[test]
    fn every_man_page_the_pages_refer_to_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let pages = generate(dir.path()).unwrap();
        assert!(pages.contains(&"wale.1".to_string()));
        for sub in ["restore", "status", "wal-fetch", "backup-fetch", "verify"] {
            assert!(pages.contains(&format!("wale-{sub}.1")), "{pages:?}");
        }
        assert!(!pages.iter().any(|p| p.contains("generate")), "{pages:?}");
        let status = std::fs::read_to_string(dir.path().join("wale-status.1")).unwrap();
        assert!(status.contains("paused at the recovery target"), "{status}");
        let restore = std::fs::read_to_string(dir.path().join("wale-restore.1")).unwrap();
        assert!(
            restore.contains("target\\-time") && restore.contains("s3\\-prefix"),
            "{restore}"
        );
        for page in &pages {
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            // roff writes a reference as `wale\\-restore(1)`.
            for (at, _) in text.match_indices("(1)") {
                let start = text[..at].rfind(char::is_whitespace).map_or(0, |i| i + 1);
                let name = text[start..at]
                    .replace("\\-", "-")
                    .replace("\\fB", "")
                    .replace("\\fR", "");
                if name.starts_with("wale") {
                    assert!(
                        dir.path().join(format!("{name}.1")).is_file(),
                        "{page} refers to {name}(1), which is not generated"
                    );
                }
            }
        }
    }

    #[test]
    fn every_global_option_survives_the_relaunch() {
        let globals: Vec<_> = Cli::command()
            .get_arguments()
            .filter(|a| a.is_global_set())
            .cloned()
            .collect();
        assert!(globals.len() >= 10);
        for arg in globals {
            let long = arg.get_long().unwrap();
            let given: Vec<String> = if arg.get_action().takes_values() {
                vec![format!("--{long}"), format!("value of {long}")]
            } else {
                vec![format!("--{long}")]
            };
            for after in [false, true] {
                let mut line = vec!["wale".to_string()];
                if after {
                    line.extend(["wal-fetch", "A", "B"].map(String::from));
                    line.extend(given.iter().cloned());
                } else {
                    line.extend(given.iter().cloned());
                    line.extend(["wal-fetch", "A", "B"].map(String::from));
                }
                let parsed = parse_from(&line).unwrap();
                assert_ne!(
                    parsed.cli.globals,
                    GlobalFlags::default(),
                    "{long} was not parsed"
                );
                let mut child: Vec<std::ffi::OsString> = vec!["wale".into()];
                child.extend(parsed.relaunch);
                child.extend(["wal-prefetch", "B", "A"].map(Into::into));
                let relaunched = parse_from(&child).unwrap();
                assert_eq!(relaunched.cli.globals, parsed.cli.globals, "{long}");
            }
        }
    }

    #[test]
    fn refusals_know_whether_wal_fetch_was_asked_for() {
        let wal_fetch = |args: &[&str]| match parse_from(args) {
            Err(refused) => refused.wal_fetch,
            Ok(_) => panic!("{args:?} parsed"),
        };
        assert!(wal_fetch(&[
            "wale",
            "wal-fetch",
            "--no-such-flag",
            "A",
            "B"
        ]));
        assert!(wal_fetch(&["wale", "--terse", "wal-fetch", "A"]));
        assert!(wal_fetch(&["wale", "--terse", "-v", "wal-fetch", "A", "B"]));
        assert!(!wal_fetch(&["wale", "backup-fetch", "wal-fetch"]));
        assert!(!wal_fetch(&["wale", "backup-list", "--no-such-flag"]));
        assert!(!wal_fetch(&["wale", "--envdir", "wal-fetch"]));
    }

    #[test]
    fn wal_e_command_lines_parse() {
        let cli = Cli::try_parse_from([
            "wale",
            "--terse",
            "--s3-prefix=s3://b/p",
            "wal-fetch",
            "A",
            "pg_wal/RECOVERYXLOG",
        ])
        .unwrap();
        assert!(cli.globals.terse);
        assert_eq!(cli.globals.s3_prefix.as_deref(), Some("s3://b/p"));
        let Command::WalFetch(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.prefetch, 8);
        let cli = Cli::try_parse_from([
            "wale",
            "wal-fetch",
            "--prefetch",
            "0",
            "A",
            "B",
            "--envdir",
            "/e",
        ])
        .unwrap();
        assert_eq!(
            cli.globals.envdir.as_deref(),
            Some(std::path::Path::new("/e"))
        );
        let cli = Cli::try_parse_from(["wale", "backup-list", "LATEST", "--detail"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::BackupList(BackupListArgs { detail: true, .. })
        ));
        assert!(
            Cli::try_parse_from(["wale", "-k", "K", "--aws-instance-profile", "version"]).is_err()
        );
        assert!(Cli::try_parse_from(["wale", "wal-fetch", "A"]).is_err());
        let cli = Cli::try_parse_from([
            "wale",
            "restore",
            "/d",
            "--standby",
            "--set",
            "a=b",
            "--tablespace",
            "1=/t",
        ])
        .unwrap();
        let Command::Restore(args) = cli.command else {
            panic!()
        };
        assert!(args.standby && args.backup_name.is_none());
        assert_eq!(args.target_timeline, "latest");
        assert!(
            Cli::try_parse_from([
                "wale",
                "restore",
                "/d",
                "--target-name",
                "x",
                "--target-lsn",
                "0/1"
            ])
            .is_err(),
            "one recovery target at most"
        );
    }
}
