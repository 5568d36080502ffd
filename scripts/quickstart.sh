#!/usr/bin/env bash
# Quick start on the bundled real WAL-E archive: restore its base backup (backup-fetch),
# then serve WAL the way restore_command would (wal-fetch, with prefetching) until the
# archive ends, and check every restored segment with PostgreSQL's pg_waldump.
#
#   scripts/quickstart.sh            (builds wale, needs nothing else)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
wale="$PWD/target/release/wale"
export WALE_FILE_PREFIX="file://$PWD/fixtures/wale-small/archive"
export WALE_PREFETCH_IDLE_SECONDS=5

echo "== backups in $WALE_FILE_PREFIX"
"$wale" backup-list --detail
start=$("$wale" backup-list LATEST | tail -n 1 | cut -f 4)

pgdata=$(mktemp -d)/pgdata
echo "== backup-fetch LATEST into $pgdata (its tablespace into pg_tblspc/, as WAL-E's file backend did)"
"$wale" backup-fetch "$pgdata" LATEST --blind-restore
pg_wal="$pgdata/pg_wal"
echo "== restoring WAL from $start on, one wal-fetch per segment, until the archive ends"
tli=${start:0:8}
n=$((16#${start:8:8} * 256 + 16#${start:16:8}))
while :; do
  seg=$(printf '%s%08X%08X' "$tli" $((n / 256)) $((n % 256)))
  set +e
  "$wale" wal-fetch "$seg" "$pg_wal/RECOVERYXLOG" && mv "$pg_wal/RECOVERYXLOG" "$pg_wal/$seg"
  rc=$?
  set -e
  [ "$rc" -eq 1 ] && break          # 1 = not in the archive: the end of WAL
  [ "$rc" -eq 0 ] || exit "$rc"
  last=$seg
  n=$((n + 1))
done

waldump=$(ls /usr/lib/postgresql/*/bin/pg_waldump 2>/dev/null | tail -n 1 || true)
if [ -n "$waldump" ]; then
  echo "== pg_waldump over the restored segments $start..$last"
  "$waldump" --path="$pg_wal" --stats "$start" "$last" | grep -E "^(WAL statistics|Total)"
else
  echo "== restored $start..$last into $pg_wal (install postgresql to check them with pg_waldump)"
fi
echo "== done: base backup and WAL restored into $pgdata"
