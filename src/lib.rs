//! wale restores PostgreSQL from WAL-E archives: a native replacement for WAL-E's restore
//! side that PostgreSQL runs as `restore_command`.
//!
//! # Layout
//!
//! Data flows one way: command line → configuration → storage → decoding → sink.
//!
//! * [`cli`]: WAL-E's subcommands and flags, and wale's `restore`/`status`/`promote`/
//!   `verify` (parsing only).
//! * [`config`]: the only reader of the environment and envdir; prefixes, S3, GCS,
//!   Azure and Swift settings, retry limits, validated.
//! * [`storage`]: the [`storage::Storage`] trait and its S3, Google Cloud Storage, Azure,
//!   OpenStack Swift and `file://` backends, with errors classified once (not found /
//!   refused / transient / permanent).
//! * [`layout`] and [`wal`]: WAL-E's key grammar, and PostgreSQL's WAL names and
//!   arithmetic (LSNs, segments, page headers). Pure.
//! * [`decode`]: the chain every object goes through (plain or encrypted, told by its
//!   first bytes, then lzop); [`decrypt`]: GPG-encrypted objects, in process with an
//!   armored key or through `gpg` as WAL-E did.
//! * [`lzop`]: the streaming lzop decoder, every checksum verified, with its own LZO1X
//!   block decoder.
//! * [`tar`] and [`extract`]: the streaming tar reader and safe extraction.
//! * [`tablespaces`]: where tablespaces go on restore.
//! * [`durable`]: files that appear complete and fsynced, or not at all; directory and
//!   file-system flushes.
//! * [`prefetch`]: prefetching, in one place: the area on disk, the background worker,
//!   and `wal-fetch`'s side.
//! * [`fetch_state`]: what `wal-fetch` records for `wale status`.
//! * [`pg`]: PostgreSQL's control data, configuration files, binaries and running server.
//! * [`users`]: operating-system users and groups.
//! * [`archive`]: questions that take more than one object: which backup a command means,
//!   a backup's partitions, the WAL listing page by page, a segment's first page header,
//!   the oldest segment.
//! * [`restore_tree`]: a base backup restored into a data directory, the pipeline
//!   `backup-fetch` and `restore` share.
//! * [`standby`]: where a restored server stands against the archive (replay position,
//!   lag, paused at a target, caught up), the facts `status` shows and `promote` checks.
//! * [`backups`]: complete backups, `LATEST`, sentinels.
//! * [`time`]: times as PostgreSQL writes them; civil dates from and to Unix time.
//! * [`text`]: wording shared by the commands' output (counts and their plurals, sizes).
//! * [`pool`]: the bounded worker pool, and the cancellation that stops blocking work.
//! * [`retry`]: one backoff policy within `WALE_RETRIES` and a deadline.
//! * [`progress`]: the progress bar of long commands (terminals only).
//! * [`commands`]: one module per subcommand. `wale restore`, from argument to running
//!   server, one file per step: `main.rs` (configuration, then the plan) → [`cli`]
//!   (`RestoreArgs`) → `commands/restore/plan.rs` (the arguments checked and typed once:
//!   [`commands::RestorePlan`]) → `commands/restore/mod.rs` (the steps in order, the
//!   fetch, undo on failure) → `preflight.rs` (every check before a write) →
//!   [`restore_tree`] (the fetch) → `configure.rs` (configuration files, envdir, recovery
//!   settings) → `start.rs` (`pg_ctl start`, waiting, failures explained).
//! * [`error`]: the error type, its kinds, and the one exit-status policy (`wal-fetch`'s
//!   rules included).

#![warn(missing_docs)]

pub mod archive;
pub mod backups;
pub mod cli;
pub mod commands;
pub mod config;
pub mod decode;
pub mod decrypt;
pub mod detached;
pub mod durable;
pub mod error;
pub mod extract;
pub mod fetch_state;
pub mod layout;
pub mod lzop;
pub mod pg;
pub mod pool;
pub mod prefetch;
pub mod progress;
pub mod restore_tree;
pub mod retry;
pub mod standby;
pub mod storage;
pub mod stream;
pub mod tablespaces;
pub mod tar;
pub mod text;
pub mod time;
pub mod users;
pub mod wal;
