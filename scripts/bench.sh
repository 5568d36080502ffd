#!/usr/bin/env bash
# The benchmark suite, one command on a fresh Debian machine (as root, package registries
# reachable): wale against real WAL-E 1.1.1, pgBackRest (backing up the same cluster) and
# the physical limits, same archive, same run.
#
#   scripts/bench.sh           full: >= 1 GB base backup in 3 partitions, ~160 WAL segments;
#                              writes benchmarks/results.md, benchmarks/ratios.svg and the
#                              table in README.md (about 50 minutes here)
#   scripts/bench.sh --quick   smaller archive, fewer runs (about 12 minutes once built);
#                              writes target/bench-results/report.md and ratios.svg only
#   scripts/bench.sh [--quick] BENCH...   reruns only these benches (micro, wal_fetch,
#                              backup_fetch, recovery, gpg, verify), keeping the others'
#                              results
#
# Steps: installs lzop, PostgreSQL 15, daemontools, pgBackRest (Debian's package) and
# WAL-E 1.1.1 in a private venv with pinned versions and the two Python 3.11 /
# PostgreSQL 15 fixes (fixtures/make-wale-fixture.sh, setup only); builds the archive with
# real WAL-E from a real PostgreSQL under pgbench load, with pgBackRest backing up the
# same cluster beside it (fixtures/make-bench-archive.sh), or reuses it from its cache
# directory (the full suite builds the quick archive as well, for its scale rows); runs the benches (the S3 server is s3s-fs, built by cargo as a
# dev-dependency and run in each bench process on loopback); merges their results
# (target/bench-results/*.json) with scripts/bench_report.py.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
if [ "${1:-}" = --quick ]; then mode=quick; shift; fi
benches=("$@")
for bench in "${benches[@]}"; do
  case "$bench" in
    micro|wal_fetch|backup_fetch|recovery|standby_lag|gpg|verify) ;;
    *) echo "usage: scripts/bench.sh [--quick] [micro|wal_fetch|backup_fetch|recovery|standby_lag|gpg|verify]..." >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench.sh: run as root (apt-get, PostgreSQL as postgres)" >&2; exit 2; }
say() { echo "[bench $(date +%T)] $*" >&2; }

missing=()
command -v lzop >/dev/null || missing+=(lzop)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v envdir >/dev/null || missing+=(daemontools)
command -v gpg >/dev/null || missing+=(gnupg)
command -v pgbackrest >/dev/null || missing+=(pgbackrest)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
say "WAL-E 1.1.1 venv"
WALE_FIXTURE_SETUP_ONLY=1 bash fixtures/make-wale-fixture.sh

# The quick archive: 0.3 GB restored from 2 partitions (WAL-E cuts one every 6144
# members), 20 segments. The full suite builds it too, for the scale rows.
quick_cache="${WALE_BENCH_QUICK_CACHE:-/var/tmp/wale-bench-cache-quick}"
build_quick_archive() {
  say "quick archive in $quick_cache"
  WALE_BENCH_CACHE="$quick_cache" BENCH_SCALE="${BENCH_SCALE:-10}" \
    BENCH_PGBENCH_PARTITIONS="${BENCH_PGBENCH_PARTITIONS:-50}" \
    BENCH_TARGET_MEMBERS="${BENCH_TARGET_MEMBERS:-12200}" BENCH_WAL_SEGMENTS="${BENCH_WAL_SEGMENTS:-20}" \
    bash fixtures/make-bench-archive.sh
}
build_quick_archive
if [ "$mode" = quick ]; then
  export WALE_BENCH_CACHE="$quick_cache" WALE_BENCH_QUICK=1
else
  export WALE_BENCH_CACHE="${WALE_BENCH_CACHE:-/var/tmp/wale-bench-cache}"
  export WALE_BENCH_QUICK=0 WALE_BENCH_SMALL_ARCHIVE="$quick_cache/archive"
  say "full archive in $WALE_BENCH_CACHE"
  bash fixtures/make-bench-archive.sh
fi

export WALE_BENCH_ARCHIVE="$WALE_BENCH_CACHE/archive"
export WALE_BENCH_RESULTS="$PWD/target/bench-results"
export WALE_BENCH_REQUIRE_WAL_E=1
elapsed=()
if [ ${#benches[@]} -eq 0 ]; then
  benches=(micro wal_fetch backup_fetch recovery standby_lag gpg verify)
  rm -rf "$WALE_BENCH_RESULTS"
  elapsed=(--elapsed-seconds)
fi
for bench in "${benches[@]}"; do
  say "cargo bench --profile profiling --bench $bench"
  cargo bench --locked --profile profiling --bench "$bench"
done

if [ "$mode" = full ]; then
  out=(--markdown benchmarks/results.md --svg benchmarks/ratios.svg --readme README.md)
  mkdir -p benchmarks
else
  out=(--markdown "$WALE_BENCH_RESULTS/report.md" --svg "$WALE_BENCH_RESULTS/ratios.svg")
fi
python3 scripts/bench_report.py "$WALE_BENCH_RESULTS" "${out[@]}" \
  --archive-meta "$WALE_BENCH_CACHE/meta.env" --mode "$mode" ${elapsed[@]+"${elapsed[@]}" "$SECONDS"}
say "done in $SECONDS s: ${out[1]} and ${out[3]}"
