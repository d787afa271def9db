#!/usr/bin/env bash
# Install everything the ARM cross builds and QEMU test runs need, from
# Debian packages only (rustup cannot download extra targets here).
#
#   cross/install.sh            install what is missing; a fast no-op when all is there
#   cross/install.sh --force    redo the apt step and rebuild the cache
#
# What it sets up (see shared/cross.md for why each piece is needed):
#   - dpkg foreign architectures arm64 + armhf;
#   - Debian's rustc-web/cargo-web/rust-web-src (1.96; /usr/bin/{rustc,rustdoc,cargo}),
#     the prebuilt aarch64 glibc std (libstd-rust-web-dev:arm64), GCC cross
#     compilers with their glibc dev files, musl for arm64/armhf, qemu-user;
#   - $LAYERLINK_CROSS_CACHE (default /var/cache/layerlink-cross)/<musl triple>/libunwind.a:
#     a copy of the target's libgcc_eh.a (Rust's unwind crate links
#     `-lunwind` on musl with link-self-contained=no); on aarch64 the copy also
#     carries a `_dl_find_object` shim built on dl_iterate_phdr, which musl lacks.
# cross/cargo-config.toml refers to those cache paths.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${LAYERLINK_CROSS_CACHE:-/var/cache/layerlink-cross}
# Bump when the cache layout or the shim changes.
CACHE_VERSION=1

PACKAGES=(
  rustc-web cargo-web rust-web-src libstd-rust-web-dev:arm64
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  musl-dev:arm64 musl-dev:armhf
  qemu-user
)
# Files whose presence says the packages are installed (cheap check).
PROBES=(
  /usr/bin/rustc /usr/bin/rustdoc /usr/bin/cargo
  /usr/bin/aarch64-linux-gnu-gcc /usr/bin/arm-linux-gnueabihf-gcc
  /usr/bin/aarch64-linux-musl-gcc /usr/bin/arm-linux-musleabihf-gcc
  /usr/bin/qemu-aarch64 /usr/bin/qemu-arm
)

force=0
[[ ${1:-} == --force ]] && force=1

log() { echo "cross/install: $*"; }

need_apt=$force
for p in "${PROBES[@]}"; do
  [[ -x $p ]] || need_apt=1
done
# The target std packages must match the compiler exactly.
if ((need_apt == 0)); then
  rustc_ver=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null || true)
  for pkg in rust-web-src libstd-rust-web-dev:arm64; do
    v=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    [[ -n $v && $v == "$rustc_ver" ]] || need_apt=1
  done
fi

if ((need_apt)); then
  SUDO=()
  [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  archs=$(dpkg --print-foreign-architectures)
  for a in arm64 armhf; do
    if ! grep -qx "$a" <<<"$archs"; then
      log "adding dpkg architecture $a"
      "${SUDO[@]}" dpkg --add-architecture "$a"
    fi
  done
  # The armhf security index has been failing to download (size mismatch).
  # When one index of a suite fails, apt may keep the suite's old lists for
  # every architecture, and then libstd-rust-web-dev:arm64 1.96 (a security
  # update) is not found. So update amd64+arm64 first (must succeed), then
  # all architectures, tolerating the armhf failure (nothing we need for
  # armhf comes from the security suite).
  log "apt-get update (amd64, arm64)"
  "${SUDO[@]}" apt-get update -qq -o APT::Architectures::=amd64 -o APT::Architectures::=arm64 ||
    log "apt-get update (amd64, arm64) reported errors"
  log "apt-get update (all architectures)"
  "${SUDO[@]}" apt-get update -qq 2>&1 | grep -v '^ ' || true
  cand() { apt-cache policy "$1" | sed -n 's/^  Candidate: //p'; }
  if [[ $(cand rustc-web) != "$(cand libstd-rust-web-dev:arm64)" ]]; then
    log "rustc-web $(cand rustc-web) but libstd-rust-web-dev:arm64 $(cand libstd-rust-web-dev:arm64):" \
      "the arm64 security index is missing; retry later" >&2
    exit 1
  fi
  log "installing ${PACKAGES[*]}"
  # Installed in one transaction so rustc-web and the std packages match.
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
  for p in "${PROBES[@]}"; do
    [[ -x $p ]] || { log "missing after install: $p" >&2; exit 1; }
  done
fi

# --- libunwind.a copies (+ _dl_find_object shim on aarch64) -------------
stamp="$CACHE/.stamp"
want_stamp="v$CACHE_VERSION $(dpkg-query -W -f='${Version}' libgcc-12-dev-arm64-cross libgcc-12-dev-armhf-cross musl-dev:arm64 2>/dev/null | tr '\n' ' ')"
if ((force == 0)) && [[ -f $stamp && $(cat "$stamp") == "$want_stamp" ]] &&
  [[ -f $CACHE/aarch64-unknown-linux-musl/libunwind.a && -f $CACHE/armv7-unknown-linux-musleabihf/libunwind.a ]]; then
  log "already installed ($(/usr/bin/rustc --version))"
  exit 0
fi

log "building libunwind.a copies in $CACHE"
mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# aarch64: libgcc_eh.a + _dl_find_object shim.
d="$CACHE/aarch64-unknown-linux-musl"
mkdir -p "$d"
eh=$(aarch64-linux-gnu-gcc -print-file-name=libgcc_eh.a)
[[ -f $eh ]] || { log "libgcc_eh.a not found for aarch64" >&2; exit 1; }
cp "$eh" "$tmp/libunwind.a"
# Compiled against musl's headers (dl_iterate_phdr) with the struct layout of
# glibc's <dlfcn.h>, which is what libgcc_eh.a was built against.
aarch64-linux-musl-gcc -O2 -fPIC -fno-stack-protector -c "$HERE/dl_find_object.c" -o "$tmp/dl_find_object.o"
aarch64-linux-gnu-ar rcs "$tmp/libunwind.a" "$tmp/dl_find_object.o"
mv "$tmp/libunwind.a" "$d/libunwind.a"

# armv7: libgcc_eh.a as is (ARM EHABI unwinding does not use _dl_find_object).
d="$CACHE/armv7-unknown-linux-musleabihf"
mkdir -p "$d"
eh=$(arm-linux-gnueabihf-gcc -print-file-name=libgcc_eh.a)
[[ -f $eh ]] || { log "libgcc_eh.a not found for armv7" >&2; exit 1; }
cp "$eh" "$d/libunwind.a.tmp" && mv "$d/libunwind.a.tmp" "$d/libunwind.a"

echo "$want_stamp" >"$stamp"
log "done ($(/usr/bin/rustc --version))"
