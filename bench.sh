#!/usr/bin/env bash
# The benchmark: builds the guest image (cached) and the VMM, boots the VMM
# once to measure streaming both ways, round trips and the guest mapping's
# memory types against host-only baselines from the same run, then boots the
# image with the VMM and with QEMU microvm in turn for the boot times. Writes
# REPORT.md, chart.svg and results.json into tests/benchmark/ (or OUT=DIR).
# Arguments go to the benchmark (see tests/src/bin/bench/main.rs), e.g.
# --no-qemu or --boots N.
set -euo pipefail
cd "$(dirname "$0")"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "bench.sh: /dev/kvm is missing or not accessible" >&2; exit 1; }
qemu=qemu-system-x86; [[ " $* " != *" --no-qemu "* ]] || qemu=""
HOST_PACKAGES=$qemu images/build.sh
cargo build --quiet --release --locked -p vmm --bins
cargo run --quiet --release --locked -p kvmshm-tests --bin bench -- --out "${OUT:-tests/benchmark}" "$@"
