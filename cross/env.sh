# shellcheck shell=bash disable=SC2034,SC2054
# Sourced by cross/build.sh and cross/test.sh: the cargo invocation for one
# ARM target. Not meant to be run directly.
#
#   cross_cargo TARGET PROFILE_KIND SUBCOMMAND ARGS...
#     PROFILE_KIND: "abort" for the device binary (release-agent: panic = "abort",
#                   std built with optimize_for_size), "unwind" otherwise (tests);
#                   decides the -Z build-std crates and features.
#
# Uses Debian's cargo/rustc (1.96, /usr/bin) with cross/cargo-config.toml and a
# target dir of its own (cross/target), so native builds with rustup's
# toolchain in ./target are never disturbed.

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$CROSS_DIR/.." && pwd)
CROSS_CACHE=${LAYERLINK_CROSS_CACHE:-/var/cache/layerlink-cross}
export CARGO_TARGET_DIR=${LAYERLINK_CROSS_TARGET_DIR:-$CROSS_DIR/target}

CROSS_TARGETS=(
  aarch64-unknown-linux-gnu
  armv7-unknown-linux-gnueabihf
  aarch64-unknown-linux-musl
  armv7-unknown-linux-musleabihf
)

cross_known_target() {
  local t
  for t in "${CROSS_TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done
  return 1
}

# Whether std is built from source (rust-web-src) for TARGET and PROFILE_KIND:
# always for the device binary (std optimize_for_size, panic_abort), and for
# tests on every target but aarch64 glibc, the only one with a matching
# prebuilt std package (libstd-rust-web-dev:arm64).
cross_needs_build_std() {
  [[ $1 != aarch64-unknown-linux-gnu || $2 == abort ]]
}

# The qemu runner for TARGET as a bash array in CROSS_RUNNER.
cross_runner() {
  case $1 in
    aarch64-unknown-linux-gnu) CROSS_RUNNER=(qemu-aarch64 -L /) ;;
    armv7-unknown-linux-gnueabihf) CROSS_RUNNER=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
    aarch64-unknown-linux-musl) CROSS_RUNNER=(qemu-aarch64) ;;
    armv7-unknown-linux-musleabihf) CROSS_RUNNER=(qemu-arm) ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}

cross_cargo() {
  local target=$1 kind=$2 sub=$3
  shift 3
  cross_known_target "$target" || { echo "cross: unknown target '$target' (one of: ${CROSS_TARGETS[*]})" >&2; return 2; }
  [[ -x /usr/bin/cargo && -x /usr/bin/rustc ]] || { echo "cross: run cross/install.sh first" >&2; return 2; }
  local args=(--config "$CROSS_DIR/cargo-config.toml")
  if [[ $CROSS_CACHE != /var/cache/layerlink-cross && $target == *musl* ]]; then
    local flags="[\"-C\", \"link-self-contained=no\", \"-L\", \"native=$CROSS_CACHE/$target\"]"
    args+=(--config "target.$target.rustflags=$flags" --config "target.$target.rustdocflags=$flags")
  fi
  if cross_needs_build_std "$target" "$kind"; then
    export RUSTC_BOOTSTRAP=1
    if [[ $kind == abort ]]; then
      # optimize_for_size: std's smaller implementations (fmt, sort, …);
      # ~235 KB less on armv7 with TLS, same behaviour.
      args+=(-Z build-std=std,panic_abort -Z build-std-features=optimize_for_size)
    else
      args+=(-Z build-std=std)
    fi
  fi
  (cd "$ROOT_DIR" && nice -n "${CROSS_NICE:-10}" /usr/bin/cargo "${args[@]}" "$sub" --target "$target" "$@")
}
