#!/usr/bin/env bash
# Where PostgreSQL's startup process waits, per restored segment, in an archive recovery
# through `restore_command = 'wale wal-fetch …'` (prefetch on, as configured by default).
#
#   scripts/trace_recovery.sh [ARCHIVE_DIR] [WAL_FETCH_FLAG...]
#
# ARCHIVE_DIR is a WAL-E archive on local disk (basebackups_005/, wal_005/); by default
# the benchmark cache's (`/var/tmp/wale-bench-cache-quick/archive`, which
# `scripts/bench.sh --quick` or fixtures/make-bench-archive.sh builds). Extra arguments go
# to `wal-fetch` (e.g. `--prefetch 0`). Needs root (PostgreSQL runs as `postgres`),
# strace, PostgreSQL 15 and a built `target/release/wale` (or the binary in $WALE).
#
# It restores the latest base backup with `wale backup-fetch` (untimed), starts
# PostgreSQL 15 under `strace -f` (only the system calls named below stop a process,
# through seccomp), waits for the end of recovery, and hands the trace to
# scripts/trace_recovery.py, which prints the breakdown per segment: starting the shell
# and wale, wale's own run (exec to exit), reaping it, the fsyncs and renames the startup
# process makes of the restored file, and the rest until the next restore_command call
# (replay). The prefetcher's own fsyncs are summed apart: they are not on the startup
# process's path. The trace and the server's log are kept in the work directory it
# prints.
set -euo pipefail
cd "$(dirname "$0")/.."

archive="${1:-/var/tmp/wale-bench-cache-quick/archive}"
shift || true
[ "$(id -u)" -eq 0 ] || { echo "trace_recovery.sh: run as root" >&2; exit 2; }
[ -d "$archive/wal_005" ] || { echo "trace_recovery.sh: no WAL-E archive in $archive" >&2; exit 2; }
wale="${WALE:-$PWD/target/release/wale}"
[ -x "$wale" ] || { echo "trace_recovery.sh: build target/release/wale first" >&2; exit 2; }
pgbin=/usr/lib/postgresql/15/bin
port="${TRACE_PORT:-25499}"

work=$(mktemp -d /var/tmp/wale-trace-XXXXXX)
chmod 755 "$work"
mkdir "$work/env" "$work/sock"
echo "file://$archive" > "$work/env/WALE_FILE_PREFIX"
echo 2 > "$work/env/WALE_PREFETCH_IDLE_SECONDS"
"$wale" --envdir "$work/env" --terse backup-fetch "$work/pgdata" LATEST
cat > "$work/pgdata/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$work/sock'
restore_command = '$wale --envdir $work/env --terse wal-fetch $* "%f" "%p"'
archive_mode = off
shared_buffers = 256MB
log_line_prefix = '%m [%p] '
EOF
echo "local all all trust" > "$work/pgdata/pg_hba.conf"
: > "$work/pgdata/pg_ident.conf"
: > "$work/pgdata/recovery.signal"
chmod 700 "$work/pgdata"
chown -R postgres:postgres "$work"
sync

echo "trace_recovery.sh: recovering in $work" >&2
strace -f --seccomp-bpf -ttt -T -y -s 300 -o "$work/trace.txt" \
  -e trace=clone,clone3,vfork,fork,execve,wait4,exit_group,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,linkat \
  runuser -u postgres -- "$pgbin/postgres" -D "$work/pgdata" > "$work/postgres.log" 2>&1 &
tracer=$!
for _ in $(seq 1 3600); do
  if grep -q "database system is ready to accept connections" "$work/postgres.log"; then break; fi
  if ! kill -0 "$tracer" 2>/dev/null; then cat "$work/postgres.log" >&2; exit 1; fi
  sleep 0.5
done
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pgdata" -m fast stop > /dev/null
wait "$tracer" || true
rm -rf "$work/pgdata"
python3 scripts/trace_recovery.py "$work/trace.txt" "$work/postgres.log"
echo "trace_recovery.sh: trace and log kept in $work" >&2
