#!/usr/bin/env bash
# The benchmark: builds the guest image (cached) and the VMM, boots the VMM
# once to measure streaming both ways, round trips and the guest mapping's
# memory types against host-only baselines from the same run, and boots QEMU
# microvm on the same image for the boot time. Writes REPORT.md, chart.svg and
# results.json into tests/benchmark/ (or OUT=DIR). Arguments go to the
# benchmark (see tests/src/bin/bench/main.rs), e.g. --no-qemu.
set -euo pipefail
cd "$(dirname "$0")"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "bench.sh: /dev/kvm is missing or not accessible" >&2; exit 1; }
if ! command -v qemu-system-x86_64 >/dev/null && [[ " $* " != *" --no-qemu "* ]]; then
	sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
	$sudo_cmd apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi
images/build.sh
cargo build --quiet --release --locked -p vmm --bins
cargo run --quiet --release --locked -p kvmshm-tests --bin bench -- --out "${OUT:-tests/benchmark}" "$@"
