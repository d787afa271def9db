#!/usr/bin/env bash
# Prepare the KVM virtual machine of the filesystem-level power-cut harness
# (tests/src/bin/layerlink-vmcut.rs, scripts/vm-powercut.sh).
#
#   tests/vm/setup.sh [AGENT_BINARY]     # default: target/release/layerlink-agent
#
# Idempotent; only does what is missing or stale:
#  * apt-get installs qemu-system-x86, busybox-static, e2fsprogs and cpio if absent;
#  * unpacks a Debian kernel (the package linux-image-amd64 depends on) into
#    $VM_DIR/kernel with `apt-get download` + `dpkg-deb -x` (no postinst, no
#    initramfs-tools: the machine's own boot is not touched);
#  * builds $VM_DIR/initramfs.cpio.gz: busybox, the kernel modules the guest
#    needs (virtio pci/blk/net/rng, ext4 and their dependencies), the agent
#    binary with the shared libraries `ldd` lists, and tests/vm/init.
#    Rebuilt when the agent, the init script or this script changes.
#
# VM_DIR is $LAYERLINK_VM_DIR, default ${LAYERLINK_CACHE:-/var/cache/layerlink}/vm.
# Prints the VM_DIR on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
agent=${1:-$root/${CARGO_TARGET_DIR:-target}/release/layerlink-agent}
vm_dir=${LAYERLINK_VM_DIR:-${LAYERLINK_CACHE:-/var/cache/layerlink}/vm}
mkdir -p "$vm_dir"

[ -x "$agent" ] || { echo "setup.sh: no agent binary at $agent (build it first)" >&2; exit 2; }
[ -c /dev/kvm ] || { echo "setup.sh: /dev/kvm is missing: this harness needs KVM" >&2; exit 2; }

# --- host packages ----------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need+=(busybox-static)
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup.sh: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
        { apt-get update >&2 || true; apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi
# busybox-static must be the static one: it runs in the guest without libc.
if ldd /bin/busybox >/dev/null 2>&1; then
    echo "setup.sh: /bin/busybox is dynamically linked; install busybox-static" >&2
    exit 2
fi

# --- kernel -----------------------------------------------------------------
kdir=$vm_dir/kernel
if [ ! -f "$kdir/vmlinuz" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt-get update >&2 || true
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || { echo "setup.sh: cannot resolve linux-image-amd64" >&2; exit 2; }
    echo "setup.sh: unpacking kernel $pkg" >&2
    dl=$(mktemp -d)
    chmod 777 "$dl"
    (cd "$dl" && apt-get download "$pkg" >&2)
    rm -rf "$kdir.new"
    mkdir -p "$kdir.new"
    dpkg-deb -x "$dl"/*.deb "$kdir.new/x"
    rm -rf "$dl"
    kver=$(ls "$kdir.new/x/lib/modules")
    mv "$kdir.new/x/boot/vmlinuz-$kver" "$kdir.new/vmlinuz"
    mv "$kdir.new/x/boot/config-$kver" "$kdir.new/config"
    mv "$kdir.new/x/lib/modules/$kver" "$kdir.new/modules"
    echo "$kver" >"$kdir.new/version"
    rm -rf "$kdir.new/x" "$kdir"
    mv "$kdir.new" "$kdir"
fi

# --- initramfs --------------------------------------------------------------
stamp=$(cat "$agent" "$here/init" "$here/setup.sh" /bin/busybox "$kdir/version" | sha256sum | cut -c1-64)
if [ -f "$vm_dir/initramfs.cpio.gz" ] && [ "$(cat "$vm_dir/initramfs.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$vm_dir"
    exit 0
fi
echo "setup.sh: building the initramfs" >&2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,tmp,etc,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
install -m 0755 "$here/init" "$stage/init"

# Modules in load order: each after its dependencies (the `depends=` field of
# the module's .modinfo section; the .deb ships no modules.dep).
modfile() {
    local n=${1//-/_} f
    f=$(find "$kdir/modules/kernel" \( -name "$n.ko" -o -name "${n//_/-}.ko" \) | head -1)
    echo "$f"
}
declare -A seen=()
order=()
add_mod() {
    local n=${1//-/_} f deps d
    [ -n "${seen[$n]:-}" ] && return 0
    seen[$n]=1
    f=$(modfile "$n")
    if [ -z "$f" ]; then
        echo "setup.sh: module $n not found (built in?)" >&2
        return 0
    fi
    deps=$(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p' | head -1)
    for d in ${deps//,/ }; do add_mod "$d"; done
    cp "$f" "$stage/lib/modules/$n.ko"
    order+=("$n")
}
for m in virtio virtio_ring virtio_pci virtio_blk virtio_net virtio_rng crc32c_generic crc32c_intel ext4; do
    add_mod "$m"
done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/order"

# The agent and its shared libraries, at the paths the loader expects.
cp "$agent" "$stage/bin/layerlink-agent"
for lib in $(ldd "$agent" | grep -o '/[^ ]*'); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done
echo "root:x:0:0:root:/:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"

(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$vm_dir/initramfs.cpio.gz.new"
mv "$vm_dir/initramfs.cpio.gz.new" "$vm_dir/initramfs.cpio.gz"
echo "$stamp" >"$vm_dir/initramfs.stamp"
echo "setup.sh: initramfs with modules: ${order[*]}" >&2
echo "$vm_dir"
