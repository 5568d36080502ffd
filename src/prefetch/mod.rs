//! The prefetch area shared by `wal-fetch` and the background prefetcher.
//!
//! Layout (WAL-E's, beside the WAL directory, or `WALE_PREFETCH_DIR`):
//!
//! ```text
//! <pg_wal>/.wal-e/prefetch/<SEGMENT>             complete, verified, fsynced segments
//! <pg_wal>/.wal-e/prefetch/running/<SEGMENT>.part   downloads in progress
//! <pg_wal>/.wal-e/prefetch/.lock                 flock'ed by the one running prefetcher
//! <pg_wal>/.wal-e/prefetch/.next                 "<first segment wanted> <segment size> <check>"
//! <pg_wal>/.wal-e/prefetch/<SEGMENT>.error       why the prefetcher could not fetch it
//! ```
//!
//! A segment appears under its own name only by `rename` after it was decoded with every
//! checksum verified, its size and first page header checked, and fsynced; so `wal-fetch`
//! can hand it to PostgreSQL with one more rename and no storage client at all.
//!
//! Everything about prefetching lives here: [`area`] (the files), [`worker`] (the
//! background process that fills the area) and [`client`] (what `wal-fetch` does with it).

pub mod area;
pub mod client;
pub mod worker;

pub use area::{PrefetchDir, check_segment_file, publish};
pub use client::{Prefetching, wal_directory_of};
