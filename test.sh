#!/usr/bin/env bash
# Runs every test: builds (or reuses from the cache) the guest image, then
# the unit tests and the VM tests, which boot the real VMM with that image.
# Needs /dev/kvm; installs what it needs (see images/build.sh), QEMU too:
# a test runs the README's QEMU command.
set -euo pipefail
cd "$(dirname "$0")"
HOST_PACKAGES=qemu-system-x86 images/build.sh
cargo build --release --locked -p vmm --bins
cargo test --release --locked --workspace
