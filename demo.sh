#!/usr/bin/env bash
# The whole demo: builds the guest image (cached after the first run) and the
# VMM, boots a guest with three shared files, and has
#   - the host fill one file with seeded data that a guest process verifies;
#   - four guest processes write 100,000 records each into another, which the
#     host verifies while the VM still runs and again after it has ended;
#   - a guest echo server answer 1,000 requests from the host, live;
#   - the host publish its clock in a fourth file, and a guest process
#     compare the guest's clock with it.
# Needs /dev/kvm. Installs what it needs (see images/build.sh).
#
#   PROCS=N RECORDS=M ./demo.sh    other numbers of writers and records
set -euo pipefail
cd "$(dirname "$0")"
procs=${PROCS:-4}
records=${RECORDS:-100000}

[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "demo.sh: /dev/kvm is missing or not accessible" >&2; exit 1; }
images/build.sh
cargo build --quiet --release --locked -p vmm --bins
vmm=target/release/vmm
kvmshm=target/release/kvmshm

dir=$(mktemp -d "${TMPDIR:-/tmp}/kvmshm-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT
need=$(( (64 + 64 * records) * procs + 4096 ))
size=$((1 << 20)); while [ "$size" -lt "$need" ]; do size=$((size * 2)); done
truncate -s 1M "$dir/data"
truncate -s 64K "$dir/echo"
truncate -s 64K "$dir/clock"
"$kvmshm" fill "$dir/data" --seed 2026

now() { date +%s.%N; }
start=$(now)
"$vmm" --kernel images/out/vmlinux --initrd images/out/initramfs.cpio \
	--shm "path=$dir/records,size=$size,id=0" --shm "path=$dir/data,size=1M,id=1" \
	--shm "path=$dir/echo,size=64K,id=2" --shm "path=$dir/clock,size=64K,id=3" \
	--cmdline "run=/bin/kvmshm-demo -- --device=/dev/kvmshm1 verify --seed=2026 :: \
write --procs=$procs --records=$records --seed=1 :: --device=/dev/kvmshm2 echo :: \
--device=/dev/kvmshm3 host-clock --seconds=1" >"$dir/console" &
vm=$!
# The console as it comes, and whole in the file for the summary.
tail -n +1 -s 0.1 -f --pid="$vm" "$dir/console" &
shown=$!

echo "demo: booting the guest; the host waits for its echo server..."
"$kvmshm" send "$dir/echo" --count 1000 --wait 600 --keep-serving
booted=$(now)
echo "demo: checking the guest's records while the VM runs:"
"$kvmshm" verify "$dir/records" --writers "$procs" --records "$records"
"$kvmshm" send "$dir/echo" --count 0 --wait 10 >/dev/null
"$kvmshm" clock "$dir/clock" --wait 30 >/dev/null
status=0; wait "$vm" || status=$?
wait "$shown"
end=$(now)
echo "demo: the VM exited with status $status; checking the file after the end:"
"$kvmshm" verify "$dir/records" --writers "$procs" --records "$records"

total=$((procs * records))
printf '\ndemo summary: %d guest processes wrote %d records (%d bytes) through /dev/kvmshm0, all found on the host;\n' \
	"$procs" "$total" $((total * 64))
printf '              host->guest 1 MiB verified in the guest; 1,000 live echo round trips;\n'
printf "              the guest's clock minus the host's: %s;\n" \
	"$(grep -ao 'median [^,]*' "$dir/console" || echo 'not measured')"
printf '              %.1f s from start to the checks, %.1f s in all.\n' \
	"$(echo "$booted - $start" | bc)" "$(echo "$end - $start" | bc)"
exit "$status"
