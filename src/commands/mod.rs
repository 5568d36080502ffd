//! The subcommands. Each takes the validated configuration and its own arguments, and
//! returns `Ok` or an [`Error`] for `main` to turn into an exit status.

mod backup_fetch;
mod backup_list;
mod promote;
mod restore;
mod status;
mod verify;
mod wal_fetch;
mod wal_prefetch;

pub use restore::plan::{RestorePlan, default_envdir as restored_envdir};
pub use restore::run as restore;
pub use status::{exit_status as status_exit, not_a_data_directory};
pub use wal_fetch::settle as settle_wal_fetch;

use crate::cli::Command;
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::{Error, exit};

/// Settings that cut across subcommands but are not storage configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How objects are decoded (decryption, lzop).
    pub decoding: Decoding,
    /// Global arguments for a child `wale` (the prefetcher).
    pub relaunch: Vec<std::ffi::OsString>,
}

/// Runs one subcommand and gives its exit status: [`exit::OK`], or for `status` the
/// state it found ([`status_exit`]). `version` never gets here: it needs no
/// configuration; nor does `restore`, which runs from its plan ([`RestorePlan`],
/// [`restore`]). The binary runs `wal-fetch` through [`wal_fetch`], which builds a runtime
/// only when the call needs one; here it runs whole inside this one.
pub async fn run(command: &Command, config: &Config, options: Options) -> Result<u8, Error> {
    if let Command::Status(args) = command {
        return status::run(config, args).await;
    }
    match command {
        Command::WalFetch(args) => {
            return wal_fetch::run(config, &options, args)
                .await
                .map(wal_fetch::Fetched::exit_code);
        }
        Command::WalPrefetch(args) => wal_prefetch::run(config, &options, args).await,
        Command::WalStream(args) => {
            crate::stream::serve(config, &options.decoding, &args.pgdata).await
        }
        Command::BackupList(args) => backup_list::run(config, args).await,
        Command::BackupFetch(args) => backup_fetch::run(config, &options.decoding, args).await,
        Command::Promote(args) => promote::run(config, args).await,
        Command::Verify(args) => verify::run(config, &options.decoding, args).await,
        Command::Status(_) | Command::Restore(_) | Command::Version | Command::Generate(_) => {
            Ok(())
        }
    }
    .map(|()| exit::OK)
}

/// `wal-fetch`, whole: what the local disk settles (a prefetch hit, a hand-over to the WAL
/// stream) runs before any async runtime exists, as most calls of a recovery end there;
/// the rest on a single-threaded runtime, which starts faster than the others' (decoding
/// still runs on a blocking thread). Its exit status.
pub fn wal_fetch(
    config: &Config,
    options: &Options,
    args: &crate::cli::WalFetchArgs,
) -> Result<u8, Error> {
    let pending = match wal_fetch::start(config, options, args)? {
        wal_fetch::Local::Done(fetched) => return Ok(fetched.exit_code()),
        wal_fetch::Local::Pending(pending) => pending,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    let finished = wal_fetch::finish(pending, config, options, args);
    runtime
        .block_on(finished)
        .map(wal_fetch::Fetched::exit_code)
}
