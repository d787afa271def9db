#!/usr/bin/env bash
# Filesystem-level power cuts of the agent's store in a QEMU VM (issue 6).
#
#   scripts/vm-powercut.sh                  # 20 cuts, seed from the clock
#   CUTS=20 SEED=42 scripts/vm-powercut.sh  # replay a seed
#   ACCEL=tcg|kvm|auto (default auto)       # KVM when it can boot the kernel, else TCG
#
# Builds the release registry and agent and the harness, prepares the VM
# (tests/vm/setup.sh: qemu, a Debian kernel, busybox, an initramfs holding the
# agent), then runs `layerlink-vmcut` (tests/src/bin/layerlink-vmcut.rs):
# the agent syncs inside the guest onto an ext4 disk opened with cache=none,
# QEMU is SIGKILLed at a seeded moment, the guest boots again and must pass
# verify, sync, verify and checkout; the host then runs e2fsck -fn and
# compares the checkout with `umoci unpack`. Failures print as `FAIL ...`
# lines with the seed; exit 1 if any cut failed. Work files go under
# $VMCUT_TMPDIR (default /var/tmp; not tmpfs: O_DIRECT needs a real disk).
set -uo pipefail
cd "$(dirname "$0")/.."

CUTS=${CUTS:-20}
SEED=${SEED:-$(date +%s)}
ACCEL=${ACCEL:-auto}
target=${CARGO_TARGET_DIR:-target}

nice -n 5 cargo build --release -p layerlink-registry -p layerlink-agent || exit 2
nice -n 5 cargo build -p layerlink-tests --bin layerlink-vmcut || exit 2
bash tests/vm/setup.sh "$target/release/layerlink-agent" >/dev/null || exit 2
export LAYERLINK_SKIP_BUILD=1

echo "== VM power cuts: $CUTS cuts, seed $SEED, accel $ACCEL"
exec "$target/debug/layerlink-vmcut" --cuts "$CUTS" --seed "$SEED" --accel "$ACCEL"
