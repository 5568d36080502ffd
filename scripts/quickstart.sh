#!/usr/bin/env bash
# Quick start on the bundled real WAL-E archives: restore a base backup (backup-fetch),
# then serve WAL the way restore_command would (wal-fetch, with prefetching) until the
# archive ends, and check every restored segment with PostgreSQL's pg_waldump; then, when
# PostgreSQL 15 is installed, the migration path on the Heroku-like archive: `wale restore
# --standby --start`, `wale status` until caught up, `wale promote`.
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

scratch=$(mktemp -d)
site=""
cleanup() {
  if [ -n "$site" ] && [ -f "$site/main/postmaster.pid" ]; then
    "${as_owner[@]}" /usr/lib/postgresql/15/bin/pg_ctl -D "$site/main" -m fast -w stop >/dev/null || true
  fi
  rm -rf "$scratch" ${site:+"$site"}
}
as_owner=()
trap cleanup EXIT
pgdata=$scratch/pgdata
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
echo "== done: base backup and WAL restored into $pgdata (removed on exit)"

if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  echo "== install postgresql-15 to also run restore --standby --start, status and promote"
  exit 0
fi
# The server runs as postgres when this runs as root: give it a readable copy of the
# archive and a socket directory of its own.
site=$(mktemp -d)
chmod 755 "$site"
cp -r fixtures/wale-heroku/archive "$site/archive"
chmod -R a+rX "$site/archive"
mkdir "$site/sock"
if [ "$(id -u)" -eq 0 ]; then chown postgres "$site/sock"; as_owner=(runuser -u postgres --); fi
query() {
  "${as_owner[@]}" /usr/lib/postgresql/15/bin/psql -X -A -t -h "$site/sock" -p 54329 -d postgres -c "$1"
}
export WALE_FILE_PREFIX="file://$site/archive"
echo "== restore the Heroku-like archive into $site/main: a running hot standby, one command"
"$wale" restore "$site/main" LATEST --standby --start --port 54329 --set "unix_socket_directories=$site/sock"
for _ in $(seq 60); do
  "$wale" status "$site/main" --json | grep -q '"caught_up": true' && break
  sleep 1
done
"$wale" status "$site/main"
echo "== the standby answers: accounts = $(query 'select count(*) from accounts'), last round = $(query 'select label from rounds order by round desc limit 1')"
echo "== promote at cutover"
"$wale" promote "$site/main"
query "create table after_cutover (at timestamptz default now()); insert into after_cutover default values" >/dev/null
echo "== the promoted server takes writes: after_cutover = $(query 'select count(*) from after_cutover') row"
echo "== done: the standby of the archive was promoted; stopped and removed on exit"
