//! The `wale` binary: parse, configure, run, and map the outcome to an exit status.

use std::fmt;
use std::io::IsTerminal;
use std::process::ExitCode;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use wale::cli::{Cli, Command};
use wale::commands::{self, Options, RestorePlan};
use wale::config::{Config, Env};
use wale::error::exit::{self, Caller};
use wale::error::{Error, Kind};

fn main() -> ExitCode {
    let wale::cli::Parsed { cli, relaunch } = match wale::cli::parse() {
        Ok(parsed) => parsed,
        Err(err) => return usage_error(err),
    };
    init_logging(cli.globals.terse, cli.globals.verbose);
    match run(&cli, relaunch) {
        Ok(code) => ExitCode::from(code),
        // restore_command's own policy: "not found" is routine there, and a standby's
        // failures must not shut it down.
        Err(err) => match &cli.command {
            Command::WalFetch(args) => ExitCode::from(commands::settle_wal_fetch(args, &err)),
            _ => {
                tracing::error!("{}", err.to_string().replace('\n', " "));
                ExitCode::from(err.exit_status(Caller::Command))
            }
        },
    }
}

/// A command line clap refused. Under `wal-fetch` the status is above 125: PostgreSQL
/// would read 2 as "not available", end archive recovery and promote.
fn usage_error(refused: wale::cli::Refused) -> ExitCode {
    let _ = refused.error.print();
    if !refused.error.use_stderr() {
        return ExitCode::from(exit::OK); // --help, --version
    }
    let caller = if refused.wal_fetch {
        Caller::WalFetch
    } else {
        Caller::Command
    };
    ExitCode::from(exit::status(Kind::Usage, caller))
}

/// Runs the command; its exit status when it did not fail.
fn run(cli: &Cli, relaunch: Vec<std::ffi::OsString>) -> Result<u8, Error> {
    if let Some(answered) = answer_without_configuration(cli) {
        return answered;
    }
    let flags = &cli.globals;
    let mut env = Env::from_process();
    if let Some(dir) = &flags.envdir {
        env.apply_envdir(dir)?;
    }
    let mut config = resolve_configuration(cli, &mut env)?;
    if !matches!(
        cli.command,
        Command::WalFetch(_) | Command::WalPrefetch(_) | Command::WalStream(_)
    ) {
        config.retry = config.retry.interactive();
    }
    // restore's arguments become its plan here, once, where the environment is: the
    // archive settings the envdir it writes will hold.
    let restore = match &cli.command {
        Command::Restore(args) => Some(RestorePlan::new(
            args,
            &config.store.prefix_url(),
            flags.envdir.as_deref(),
            wale::config::envdir_settings(flags, &env)?,
        )?),
        _ => None,
    };
    let options = Options {
        relaunch,
        decoding: wale::decode::Decoding::new(
            &config,
            wale::lzop::Options {
                allow_concatenated: flags.allow_concatenated_lzop,
            },
        ),
    };
    if let Command::WalFetch(args) = &cli.command {
        return commands::wal_fetch(&config, &options, args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    match restore {
        Some(plan) => runtime
            .block_on(commands::restore(&config, &options, &plan))
            .map(|()| exit::OK),
        None => runtime.block_on(commands::run(&cli.command, &config, options)),
    }
}

/// The commands that need no archive configuration, answered; `None` for the others.
fn answer_without_configuration(cli: &Cli) -> Option<Result<u8, Error>> {
    match &cli.command {
        Command::Version => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            Some(Ok(exit::OK))
        }
        Command::Generate(args) => Some(
            wale::cli::generate(&args.out_dir)
                .map(|_| exit::OK)
                .map_err(|e| {
                    Error::local(
                        &args.out_dir,
                        "cannot write the man pages and completions",
                        e,
                    )
                }),
        ),
        // Scripts read `status`'s exit status: a directory that is no data directory is
        // its own status, before any configuration is looked for.
        Command::Status(args) => commands::not_a_data_directory(&args.pgdata).map(|reason| {
            tracing::error!("{reason}");
            Ok(commands::status_exit::NOT_A_DATA_DIRECTORY)
        }),
        _ => None,
    }
}

/// The configuration from the flags and the environment; `status` and `promote` of a
/// server `restore` made find the archive through the envdir it wrote beside the data
/// directory (applied to `env`).
fn resolve_configuration(cli: &Cli, env: &mut Env) -> Result<Config, Error> {
    let flags = &cli.globals;
    match Config::resolve(flags, env) {
        Err(wale::config::Error::NoPrefix) if flags.envdir.is_none() => {
            match restored_envdir(&cli.command) {
                Some(dir) => {
                    env.apply_envdir(&dir)?;
                    Ok(Config::resolve(flags, env)?)
                }
                None => Err(wale::config::Error::NoPrefix.into()),
            }
        }
        other => Ok(other?),
    }
}

/// The envdir `wale restore` wrote for the data directory `status` or `promote` names.
fn restored_envdir(command: &Command) -> Option<std::path::PathBuf> {
    let pgdata = match command {
        Command::Status(args) => &args.pgdata,
        Command::Promote(args) => &args.pgdata,
        _ => return None,
    };
    Some(commands::restored_envdir(
        &std::path::absolute(pgdata).ok()?,
    ))
    .filter(|dir| dir.is_dir())
}

/// One line per event on stderr, `wale: LEVEL: message`, fit for the PostgreSQL log.
/// `--terse` keeps warnings and errors, `-v` adds wale's debug lines (retried attempts);
/// `RUST_LOG` overrides the level for debugging.
fn init_logging(terse: bool, verbose: bool) {
    let default = match (terse, verbose) {
        (true, _) => "warn",
        (false, true) => "info,wale=debug",
        (false, false) => "info",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The SDK and HTTP stack dump requests, signed headers included, at debug and trace:
    // never let a credential reach a log, whatever RUST_LOG asks for.
    for quiet in [
        "aws_config",
        "aws_runtime",
        "aws_sdk_s3",
        "aws_sigv4",
        "aws_smithy_http_client",
        "aws_smithy_runtime",
        "aws_smithy_runtime_api",
        "aws_smithy_types",
        "hyper",
        "hyper_util",
        "h2",
        "rustls",
    ] {
        filter = filter.add_directive(format!("{quiet}=info").parse().expect("a valid directive"));
    }
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_writer(|| LogLine)
        .with_ansi(terminal)
        .with_env_filter(filter)
        .event_format(OneLine)
        .init();
}

/// Stderr for one log event, with any progress bar taken off the screen meanwhile.
struct LogLine;

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        wale::progress::suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

struct OneLine;

impl<S, N> FormatEvent<S, N> for OneLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "wale: {}: ", event.metadata().level())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
