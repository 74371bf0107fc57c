#!/usr/bin/env bash
# Runs every test: builds (or reuses from the cache) the guest image, then
# the unit tests and the VM tests, which boot the real VMM with that image.
# Needs /dev/kvm; installs what it needs (see images/build.sh).
set -euo pipefail
cd "$(dirname "$0")"
images/build.sh
cargo build --release --locked -p vmm --bins
cargo test --release --locked --workspace
