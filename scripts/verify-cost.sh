#!/usr/bin/env bash
# CPU cost of layer verification (verify_layers, issue 13.8): the agent's
# user+system CPU and peak RSS for a cold sync of base-a:v1 and an update
# upd:v1 -> upd:v2, with --verify-layers off and on, N runs each (default 3),
# against a local registry holding the cached test images.
#
#   scripts/verify-cost.sh [N]
#
# Env: REGISTRY (a registry binary; default: a --release build),
# CARGO_TARGET_DIR (where the binaries are built), LAYERLINK_CACHE
# (test images, default /var/cache/layerlink/images), AGENT (an agent binary
# to measure instead of the native release-agent build; e.g. a cross build
# run through qemu: AGENT="qemu-aarch64 cross/target/dist/.../layerlink-agent"
# AGENT_ARGS="--platform linux/amd64", as the test images are amd64).
set -euo pipefail
n=${1:-3}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
oci=${LAYERLINK_CACHE:-/var/cache/layerlink/images}/oci
if [[ -z ${REGISTRY:-} ]]; then
  cargo build -q --manifest-path "$root/Cargo.toml" -p layerlink-registry --release
fi
cargo build -q --manifest-path "$root/Cargo.toml" -p layerlink-agent --profile release-agent
reg_bin=${REGISTRY:-$target/release/layerlink-registry}
agent=${AGENT:-$target/release-agent/layerlink-agent}
work=$(mktemp -d /tmp/layerlink-verify-cost.XXXXXX)
trap 'kill $reg_pid 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/reg.toml" <<TOML
precompute = false
[[devices]]
id = "dev1"
token = "tok"
repositories = ["*"]
TOML
mkdir "$work/data"
"$reg_bin" serve --listen 127.0.0.1:0 --data "$work/data" --config "$work/reg.toml" >"$work/reg.out" 2>"$work/reg.err" &
reg_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/reg.out" && break; sleep 0.1; done
url=$(sed -n 's/.*listening on //p' "$work/reg.out" | head -1)
host=${url#http://}
for t in base-a:v1 upd:v1 upd:v2; do
  skopeo copy -q --dest-tls-verify=false "oci:$oci:$t" "docker://$host/test/$t"
done
sleep 2
# sync STORE IMAGE MODE -> prints "user sys maxrss_kib"
sync() {
  /usr/bin/time -f "%U %S %M" -o "$work/time" $agent sync -q --server "$url" --store "$1" \
    --token tok --retry-for 0 --verify-layers "$3" ${AGENT_ARGS:-} "test/$2" >/dev/null
  cat "$work/time"
}
# Warm the registry's caches (cold archives, frames) so runs are alike.
sync "$work/warm" base-a:v1 off >/dev/null
sync "$work/warm" upd:v1 off >/dev/null
sync "$work/warm" upd:v2 off >/dev/null
printf "%-22s %-4s %8s %8s %8s %9s\n" scenario mode user_s sys_s cpu_s rss_kib
for i in $(seq "$n"); do
  for mode in off on; do
    rm -rf "$work/s"
    read -r u s m < <(sync "$work/s" base-a:v1 "$mode")
    printf "%-22s %-4s %8s %8s %8.2f %9s\n" "cold base-a:v1" "$mode" "$u" "$s" "$(echo "$u + $s" | bc)" "$m"
    rm -rf "$work/s"
    sync "$work/s" upd:v1 off >/dev/null
    read -r u s m < <(sync "$work/s" upd:v2 "$mode")
    printf "%-22s %-4s %8s %8s %8.2f %9s\n" "update upd:v1->v2" "$mode" "$u" "$s" "$(echo "$u + $s" | bc)" "$m"
  done
done
