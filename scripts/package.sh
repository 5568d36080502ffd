#!/usr/bin/env bash
# Builds the Debian package target/debian/wale_<version>_<arch>.deb: the release binary,
# the man page and bash/zsh/fish completions (generated from wale's own clap definitions
# by the hidden `wale generate DIR`), README and LICENSE. Installs cargo-deb if missing.
#   scripts/package.sh && sudo dpkg -i target/debian/wale_*.deb && man wale
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked
rm -rf target/assets
target/release/wale generate target/assets
gzip -9n target/assets/wale.1
cargo deb --no-build --strip
ls -l target/debian/*.deb
