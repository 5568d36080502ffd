#!/usr/bin/env bash
# Builds the Debian package <target>/debian/wale_<version>_<arch>.deb: the release binary,
# the man pages (wale.1 and one per subcommand) and bash/zsh/fish completions (generated
# from wale's own clap definitions by the hidden `wale generate DIR`), README and LICENSE.
# Installs cargo-deb if missing. Honours CARGO_TARGET_DIR.
#   scripts/package.sh && sudo dpkg -i target/debian/wale_*.deb && man wale
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --locked
target_dir="${CARGO_TARGET_DIR:-target}"
# The assets' paths in Cargo.toml are relative to the package: target/assets.
rm -rf target/assets
"$target_dir/release/wale" generate target/assets
gzip -9n target/assets/*.1
cargo deb --no-build --strip
ls -l "$target_dir"/debian/*.deb
