//! `wal-prefetch BASE_DIRECTORY SEGMENT`: runs the background prefetcher ([`crate::prefetch`])
//! in the foreground, WAL-E's command line; `wal-fetch` starts it itself.

use crate::cli::WalPrefetchArgs;
use crate::commands::Options;
use crate::config::Config;
use crate::error::Error;
use crate::prefetch;
use crate::wal::SegmentName;

pub async fn run(config: &Config, options: &Options, args: &WalPrefetchArgs) -> Result<(), Error> {
    let first = SegmentName::parse(&args.segment)
        .ok_or_else(|| Error::Usage(format!("{:?} is not a WAL segment name", args.segment)))?;
    prefetch::worker::run(
        config,
        &options.decoding,
        &args.base_directory,
        first,
        args.window,
    )
    .await
}
