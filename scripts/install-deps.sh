#!/usr/bin/env bash
# Install the tools the build, the test images, the end-to-end tests and the
# benchmark (skopeo, umoci, ostree as peers) need.
#
# Idempotent and fast when everything is present: each tool is checked with
# `command -v`, and apt-get runs (update + install) only when something is
# missing. Meant for a Debian bookworm machine, run as root (CI is root).
# Cross toolchains are installed separately by cross/install.sh.
set -euo pipefail

# command -> Debian package providing it
declare -A PKG_FOR=(
  [skopeo]=skopeo
  [umoci]=umoci
  [debootstrap]=debootstrap
  [jq]=jq
  [/usr/bin/time]=time
  [setfattr]=attr
  [getfattr]=attr
  [rsync]=rsync
  [curl]=curl
  [python3]=python3
  [flock]=util-linux
  [gzip]=gzip
  [tar]=tar
  [zstd]=zstd
  [cc]=gcc
  # scripts/bench.sh: OSTree as a peer (archive repo, pulls, static deltas).
  [ostree]=ostree
)
# Optional: used for the podman push test when it works here.
declare -A OPTIONAL_PKG_FOR=([podman]=podman)

missing=()
for cmd in "${!PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
optional=()
for cmd in "${!OPTIONAL_PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || optional+=("${OPTIONAL_PKG_FOR[$cmd]}")
done

# cargo-fuzz (scripts/fuzz.sh, run by scripts/test.sh): from crates.io,
# built once into ~/.cargo/bin.
if ! command -v cargo-fuzz >/dev/null 2>&1 && ! [[ -x "$HOME/.cargo/bin/cargo-fuzz" ]]; then
  echo "install-deps: cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

if ((${#missing[@]} == 0 && ${#optional[@]} == 0)); then
  echo "install-deps: all tools present"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# Unique, sorted package list.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
mapfile -t optional < <(printf '%s\n' "${optional[@]}" | sort -u | sed '/^$/d')
echo "install-deps: installing ${missing[*]} ${optional[*]}"

"${SUDO[@]}" apt-get update -qq
if ((${#missing[@]} > 0)); then
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#optional[@]} > 0)); then
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${optional[@]}" ||
    echo "install-deps: optional packages (${optional[*]}) could not be installed; continuing"
fi

for cmd in "${!PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-deps: $cmd still missing" >&2; exit 1; }
done
echo "install-deps: done"
