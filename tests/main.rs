//! The one integration-test binary. Every test drives the real `wale` binary or the
//! library against real parts: the real `lzop`, a real S3 server on 127.0.0.1 (s3s-fs,
//! signatures checked), and a real WAL-E 1.1.1 archive of a PostgreSQL 15 cluster.

mod common;

/// `backup-fetch`: WAL-E's tree, tablespaces, safety, failures and resumption.
mod backup_fetch;
/// `backup-list` against WAL-E's recorded output, on both backends.
mod backup_list;
/// Google Cloud Storage and Azure, on their emulators.
mod cloud;
/// GPG-encrypted archives: in process and through gpg, damage, keys, a real recovery.
mod gpg;
/// `restore` interrupted: failing partitions, SIGINT/SIGTERM, SIGKILL and the same command.
mod interrupted;
/// The lzop decoder against the real `lzop` and real WAL-E objects.
mod lzop_compat;
/// PostgreSQL 10 to 18, each from a real WAL-E archive of its own: standby and PITR.
mod matrix;
/// An operator's first day: envdir secrets, `file://` hosts, `status` on non-directories.
mod operator;
/// Real PostgreSQL recovering through `wale wal-fetch`.
mod postgres;
/// The background prefetcher: hits, clean-up, kill -9.
mod prefetch;
/// Seeded campaigns: injected faults, kill -9, fuzzing.
mod reliability;
/// Full, read-only and cross-device destinations.
mod resources;
/// `restore`, `status`, `promote`: from a Heroku-like archive to a standby and cutover.
mod restore;
/// S3 specifics: signatures, faults, retries, envdir, request shapes.
mod s3;
/// A standby through faults: store outages, SIGKILL, prefetchers killed, a growing archive.
mod standby_faults;
/// The storage contract, run against both backends.
mod storage_contract;
/// OpenStack Swift, on a real Swift server.
mod swift;
/// `verify`: whole archives and each kind of damage.
mod verify;
/// `wal-fetch` end to end: byte identity, exit codes, nothing left behind.
mod wal_fetch;
/// A standby through wale's WAL stream: a timeline switch, the stream killed, who may connect.
mod wal_stream;
