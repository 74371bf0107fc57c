#!/usr/bin/env bash
# The long run of the device-model fuzzer: libFuzzer (cargo-fuzz, on stable
# Rust, without sanitizers) feeds random sequences of guest actions to the
# VMM's device model (vmm/src/fuzz.rs) and checks its invariants after each
# action. At the end it prints how many actions ran without a failure. A
# failure stops it with the action sequence, saved under vmm/fuzz/artifacts/.
# The test suite runs a short pass of the same harness on every run.
#
#   ./fuzz.sh                 10 minutes
#   FUZZ_SECONDS=N ./fuzz.sh  N seconds
#
# It starts from the committed corpus (vmm/fuzz/corpus/device_model) and
# keeps what it finds in a scratch corpus under the cache directory.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-600}
cache=${KVMSHM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmshm}
version=0.13.2
tools="$cache/tools/cargo-fuzz-$version"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
	echo "fuzz.sh: installing cargo-fuzz $version" >&2
	cargo install --quiet --locked --root "$tools.tmp" cargo-fuzz --version "$version"
	rm -rf "$tools" && mv "$tools.tmp" "$tools"
fi
scratch="$cache/fuzz-corpus/device_model"
mkdir -p "$scratch"
log="$cache/fuzz-device_model.log"
status=0
(cd vmm && "$tools/bin/cargo-fuzz" run --sanitizer none --release device_model "$scratch" fuzz/corpus/device_model -- \
	-max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1 || status=$?
if [ "$status" = 0 ]; then
	grep -E '^(device-model fuzzer|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log"
else
	tail -40 "$log" >&2
	echo "fuzz.sh: the fuzzer failed (status $status); its whole output is in $log" >&2
fi
exit "$status"
