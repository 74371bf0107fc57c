#!/usr/bin/env bash
# Builds the guest into images/out/ (one vCPU) and images/out/smp/ (vmm
# --cpus N): vmlinux, the driver module and initramfs.cpio with the static
# guest programs. Expensive outputs (kernel source and
# build) are cached under $KVMSHM_CACHE, keyed by a hash of their inputs, so a
# second run with nothing changed takes seconds.
#
# Environment:
#   KERNEL_SRC=/path/to/linux  build that tree (out of tree, never modified)
#                              instead of Debian's linux-source-7.3
#   KVMSHM_CACHE=DIR           cache directory (default ~/.cache/kvmshm)
#   IMAGE_SHELL=1              add busybox so that an image without run= gets
#                              a shell on the console (costs boot time)
#   HOST_PACKAGES="PKG..."     Debian packages to install with the toolchain's,
#                              for what runs the image (test.sh: QEMU)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
out="$here/out"
cache=${KVMSHM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmshm}
kernel_version=7.3
bindgen_version=0.72.1
llvm=19
musl_target=x86_64-unknown-linux-musl
jobs=$(nproc)

step="start"
trap 'echo "images/build.sh: step \"$step\" failed (exit $?); see the messages above" >&2' ERR

log() { printf '[images] %s\n' "$*" >&2; }

# A hash of files and strings, to key cached outputs by their inputs.
input_hash() {
	{
		for arg in "$@"; do
			if [ -f "$arg" ]; then sha256sum "$arg" | cut -d' ' -f1; else printf '%s\n' "$arg"; fi
		done
	} | sha256sum | cut -c1-16
}

# Packages are checked before anything is installed, so a warm run does not
# touch apt at all.
step="toolchain: Debian packages"
packages=(clang-$llvm lld-$llvm llvm-$llvm libclang-$llvm-dev flex bison bc make
	libelf-dev libssl-dev cpio xz-utils musl-tools)
[ "${IMAGE_SHELL:-0}" = 1 ] && packages+=(busybox-static)
read -r -a host_packages <<<"${HOST_PACKAGES:-}"
packages+=("${host_packages[@]}")
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd=sudo
	$sudo_cmd apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step="toolchain: rustup components"
rust_sysroot=$(rustc --print sysroot)
[ -d "$rust_sysroot/lib/rustlib/src/rust/library" ] || rustup component add rust-src
[ -d "$rust_sysroot/lib/rustlib/$musl_target" ] || rustup target add "$musl_target"

step="toolchain: bindgen-cli $bindgen_version"
tools="$cache/tools/bindgen-$bindgen_version"
if [ ! -x "$tools/bin/bindgen" ]; then
	log "installing bindgen-cli $bindgen_version"
	LIBCLANG_PATH=/usr/lib/llvm-$llvm/lib cargo install --quiet --locked \
		--root "$tools.tmp" bindgen-cli --version "$bindgen_version"
	rm -rf "$tools" && mv "$tools.tmp" "$tools"
fi
export PATH="$tools/bin:$PATH"
export LIBCLANG_PATH=/usr/lib/llvm-$llvm/lib
kmake=(make LLVM=-$llvm -j"$jobs")

toolchain_id=$(input_hash "$(rustc --version)" "$(clang-$llvm --version | head -1)" \
	"$(bindgen --version)")

# Debian's source package is fetched with an apt configuration of our own:
# the system's apt sources and state are never touched. The mirror is the one
# the system already uses.
fetch_debian_source() {
	local aptdir="$cache/apt" mirror
	mirror=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list.d/*.sources \
		/etc/apt/sources.list 2>/dev/null | head -1 | tr -d ' ')
	mirror=${mirror%/}
	[ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt" >&2; return 1; }
	mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie-backports main" \
		>"$aptdir/sources.list"
	touch "$aptdir/status"
	local opts=(-o Dir::Etc::SourceList="$aptdir/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o Dir::State::Lists="$aptdir/lists" -o Dir::State::status="$aptdir/status"
		-o Dir::Cache="$aptdir" -o APT::Sandbox::User=root)
	apt-get "${opts[@]}" -qq update
	(cd "$aptdir/archives" && apt-get "${opts[@]}" -qq download "linux-source-$kernel_version")
	ls "$aptdir"/archives/linux-source-"$kernel_version"_*.deb | tail -1
}

if [ -n "${KERNEL_SRC:-}" ]; then
	step="kernel source: $KERNEL_SRC"
	src=$(cd "$KERNEL_SRC" && pwd)
	[ -f "$src/Makefile" ] || { echo "KERNEL_SRC=$src is not a kernel tree" >&2; false; }
	for p in "$here"/patches/*.patch; do
		patch -p1 -R --dry-run -s -f -d "$src" <"$p" >/dev/null 2>&1 ||
			log "warning: $KERNEL_SRC lacks $(basename "$p"); see its header"
	done
	src_id=$(input_hash "$src" "$(cd "$src" && make -s kernelversion)")
else
	step="kernel source: Debian linux-source-$kernel_version"
	deb=$(ls "$cache"/apt/archives/linux-source-"$kernel_version"_*.deb 2>/dev/null | tail -1 || true)
	[ -n "$deb" ] || deb=$(fetch_debian_source)
	src_id=$(input_hash "$deb" "$here"/patches/*.patch)
	src="$cache/linux/src-$src_id"
	if [ ! -f "$src/.kvmshm-ready" ]; then
		log "unpacking $(basename "$deb") and applying images/patches"
		rm -rf "$src.tmp" && mkdir -p "$src.tmp"
		dpkg-deb --fsys-tarfile "$deb" | tar -x -O --wildcards '*/linux-source-*.tar.xz' |
			tar -xJ -C "$src.tmp" --strip-components=1
		# A patch that does not apply leaves no 1.8 GB tree behind (the
		# pruning keeps *.tmp trees, which may be another build's).
		for p in "$here"/patches/*.patch; do
			patch -p1 -s -d "$src.tmp" <"$p" || { rm -rf "$src.tmp"; false; }
		done
		touch "$src.tmp/.kvmshm-ready"
		rm -rf "$src" && mv "$src.tmp" "$src"
	fi
	touch "$src" # last used: see prune_kernel_cache
fi

# Two kernels from one source: a uniprocessor one for one vCPU, the default,
# and one with CONFIG_SMP for `vmm --cpus N`. SMP makes a one-vCPU boot about
# 1.5 times longer here (README, "Boot time"), so a one-vCPU guest does not
# pay for it. Each has its own driver build (module ABI differs with SMP) and
# initramfs; the guest programs are shared.
#   images/out/      vmlinux, System.map, kvmshm.ko, initramfs.cpio (UP), kvmshm-demo
#   images/out/smp/  vmlinux, System.map, kvmshm.ko, initramfs.cpio (SMP)

# Builds the kernel with guest.config and the fragment $1 (cached); sets kbuild.
build_kernel() {
	local fragment=$1 kernel_id wrong_opts
	step="kernel build ($(basename "$fragment"))"
	kernel_id=$(input_hash "$src_id" "$here/guest.config" "$fragment" "$toolchain_id")
	kbuild="$cache/linux/build-$kernel_id"
	if [ -f "$kbuild/.kvmshm-ready" ] && [ -z "${KERNEL_SRC:-}" ]; then touch "$kbuild"; return; fi
	log "building the $(basename "$fragment" .config) kernel in $kbuild (4 to 10 minutes cold on 2 cores)"
	mkdir -p "$kbuild"
	rm -f "$kbuild/.kvmshm-ready"
	"${kmake[@]}" -s -C "$src" O="$kbuild" tinyconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$kbuild" "$kbuild/.config" "$here/guest.config" "$fragment" >/dev/null
	"${kmake[@]}" -s -C "$src" O="$kbuild" olddefconfig
	# merge_config would only warn; an option that did not stick is an error.
	wrong_opts=$({
		grep -hE '^CONFIG_[A-Z0-9_]+=' "$here/guest.config" "$fragment" | while read -r opt; do
			grep -qx "$opt" "$kbuild/.config" || echo "$opt"; done
		sed -nE 's/^# (CONFIG_[A-Z0-9_]+) is not set$/\1/p' "$here/guest.config" "$fragment" | while read -r opt; do
			if grep -q "^$opt=" "$kbuild/.config"; then echo "$opt (should be off)"; fi; done
	} | tr '\n' ' ')
	[ -z "$wrong_opts" ] || { echo "options not as guest.config and $fragment ask: $wrong_opts" >&2; false; }
	"${kmake[@]}" -s -C "$src" O="$kbuild" vmlinux modules
	touch "$kbuild/.kvmshm-ready" "$kbuild"
}

# Each change to the patches or the configs adds a source tree and two builds
# (about 4 GB) to the cache: keep those of the last few versions used (by
# when they were last used: the ones just used are the newest) and drop the
# older ones and any unpacking that was interrupted.
prune_kernel_cache() {
	step="pruning $cache/linux"
	local old
	old=$({
		ls -dt "$cache"/linux/build-* 2>/dev/null | tail -n +9
		ls -dt "$cache"/linux/src-* 2>/dev/null | grep -v '\.tmp$' | tail -n +5
		ls -d "$cache"/linux/src-*.tmp 2>/dev/null
	} || true)
	[ -z "$old" ] || log "dropping $(echo "$old" | wc -l) older kernel trees from $cache/linux"
	echo "$old" | while read -r d; do [ -z "$d" ] || rm -rf "$d"; done
}

# Each output is written beside its final name, then renamed: an interrupted
# run never leaves a half-written file that a later run would take for good.
install_out() { cp "$1" "$2/.$3.tmp" && mv -f "$2/.$3.tmp" "$2/$3"; }

step="guest user space"
(cd "$top" && cargo build --quiet --locked --profile guest --target "$musl_target" -p guest-userspace)
guest_bins="$top/target/$musl_target/guest"
mkdir -p "$out"
install_out "$guest_bins/kvmshm-demo" "$out" kvmshm-demo

# Installs the kernel built in $1, its driver and an initramfs into $2.
install_image() {
	local kbuild=$1 dir=$2 driver_id dbuild list
	mkdir -p "$dir"
	step="install the kernel into $dir"
	# System.map is for `vmm --profile-guest`, which names the guest kernel's
	# functions from it.
	for f in vmlinux System.map; do
		cmp -s "$kbuild/$f" "$dir/$f" 2>/dev/null || install_out "$kbuild/$f" "$dir" "$f"
	done

	step="guest driver for $kbuild"
	driver_id=$(input_hash "$kbuild" $(find "$top/guest-driver" -type f | sort))
	dbuild="$cache/driver/$driver_id"
	if [ ! -f "$dbuild/.kvmshm-ready" ]; then
		log "building guest-driver against $(basename "$kbuild")"
		rm -rf "$dbuild" && mkdir -p "$dbuild" && cp -r "$top/guest-driver/." "$dbuild/"
		"${kmake[@]}" -s -C "$kbuild" M="$dbuild" modules
		touch "$dbuild/.kvmshm-ready"
	fi
	install_out "$dbuild/kvmshm.ko" "$dir" kvmshm.ko

	step="initramfs in $dir"
	list="$dir/.initramfs.list"
	{
		echo "dir /dev 0755 0 0"
		echo "nod /dev/console 0600 0 0 c 5 1"
		echo "dir /proc 0755 0 0"
		echo "dir /sys 0755 0 0"
		echo "dir /tmp 1777 0 0"
		echo "dir /bin 0755 0 0"
		echo "dir /lib 0755 0 0"
		# /init is kvmshm-demo too (see guest-userspace/src/init.rs).
		echo "file /bin/kvmshm-demo $out/kvmshm-demo 0755 0 0 /init"
		echo "file /lib/kvmshm.ko $dir/kvmshm.ko 0644 0 0"
		if [ "${IMAGE_SHELL:-0}" = 1 ]; then
			echo "file /bin/busybox /bin/busybox 0755 0 0"
			echo "slink /bin/sh busybox 0777 0 0"
		fi
		for extra in ${IMAGE_EXTRA:-}; do
			echo "file /bin/$(basename "$extra") $extra 0755 0 0"
		done
	} >"$list"
	"$kbuild/usr/gen_init_cpio" "$list" >"$dir/.initramfs.cpio.tmp"
	mv -f "$dir/.initramfs.cpio.tmp" "$dir/initramfs.cpio"
	rm -f "$list"
	log "$dir: $(cd "$dir" && ls -s --block-size=K vmlinux kvmshm.ko initramfs.cpio | tr '\n' ' ')"
}

build_kernel "$here/up.config"
install_image "$kbuild" "$out"
build_kernel "$here/smp.config"
install_image "$kbuild" "$out/smp"
prune_kernel_cache
