#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need (the real
# lzop, used as the reference decoder and to make test inputs), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v lzop >/dev/null; then
  echo "installing lzop (tests compare wale against the real lzop)" >&2
  sudo_if_needed=""
  [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq lzop
fi

cargo test --release --locked
# The benchmarks must keep compiling even when nobody runs them.
cargo bench --locked --no-run
