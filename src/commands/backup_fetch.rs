//! `backup-fetch PG_CLUSTER_DIRECTORY BACKUP_NAME|LATEST`: restore a base backup.
//!
//! Parses the flags, chooses the backup ([`crate::archive`]) and hands both to the
//! pipeline in [`crate::restore_tree`].

use std::sync::Arc;

use crate::archive::{self, Wanted};
use crate::backups::Query;
use crate::cli::BackupFetchArgs;
use crate::config::Config;
use crate::decode::Decoding;
use crate::error::Error;
use crate::layout::{BackupName, Layout};
use crate::pool::Cancellation;
use crate::restore_tree::{self, FetchRequest};
use crate::storage::Store;
use crate::tablespaces;

/// Runs `backup-fetch`: flags checked before anything is fetched, a directory this run
/// created removed again when no backup could be chosen.
pub async fn run(
    config: &Config,
    decoding: &Decoding,
    args: &BackupFetchArgs,
) -> Result<(), Error> {
    let mappings = args
        .tablespaces
        .iter()
        .map(|m| tablespaces::parse_mapping(m))
        .collect::<Result<Vec<_>, _>>()?;
    let target = &args.pg_cluster_directory;
    let created = !target.exists();
    restore_tree::prepare_target(target, args.overwrite)?;
    let (store, backup) = match choose(config, &args.backup_name).await {
        Ok(chosen) => chosen,
        Err(err) => {
            // Nothing was written yet: a directory this run created goes again.
            if created {
                let _ = std::fs::remove_dir(target);
            }
            return Err(err);
        }
    };
    let request = FetchRequest {
        target: args.pg_cluster_directory.clone(),
        backup,
        pool_size: args.pool_size,
        blind_restore: args.blind_restore,
        restore_spec: args.restore_spec.clone(),
        mappings,
        keep_wal_link: args.keep_wal_link,
        cancellation: Cancellation::new(),
        reserved: Vec::new(),
    };
    let _signals = crate::pool::cancel_on_signals(&request.cancellation);
    let fetched = restore_tree::fetch(config, &store, decoding, &request).await;
    if fetched.is_err() && created {
        // Refused before anything was written (e.g. missing tablespace links): the
        // directory this run created goes again. One that holds a partial restore is
        // not empty, so it stays, for the same command to complete.
        let _ = std::fs::remove_dir(target);
    }
    fetched
}

/// The store, and the backup `query` (a name or `LATEST`) means in it.
async fn choose(config: &Config, query: &str) -> Result<(Arc<Store>, BackupName), Error> {
    let store = Arc::new(Store::open(&config.store).await?);
    let query = Query::parse(Some(query))?;
    let layout = Layout::new(config.store.path_prefix());
    let backup = archive::resolve_backup(config, &store, &layout, &Wanted::Query(query)).await?;
    Ok((store, backup.name))
}
