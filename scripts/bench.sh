#!/usr/bin/env bash
# Every benchmark, each against its baselines in the same run: LZO decoding (vs lzop -d),
# wal-fetch latency (vs lzop -d and WAL-E), backup-fetch throughput and memory (vs
# lzop -d | tar -x and WAL-E) on a >= 1 GB archive made by real WAL-E, built first if
# missing (fixtures/make-bench-archive.sh; needs root, PostgreSQL 15, pip); PostgreSQL
# recovery of that archive's WAL with each restore_command (vs cp of local files, WAL-E).
set -euo pipefail
cd "$(dirname "$0")/.."
archive="${WALE_BENCH_ARCHIVE:-/var/tmp/wale-bench-cache/archive}"
if [ ! -d "$archive/basebackups_005" ] && [ -x fixtures/make-bench-archive.sh ]; then
  fixtures/make-bench-archive.sh
fi
cargo bench --bench lzo_decode
cargo bench --bench wal_fetch
cargo bench --bench backup_fetch
cargo bench --bench recovery
