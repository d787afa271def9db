#!/usr/bin/env bash
# The whole path once, on this machine: build, start a registry on its
# embedded store, push an image with skopeo, sync it to a device store with
# the agent, check it out, print what both sides hold, stop the registry.
#
#   scripts/quickstart.sh [TAG]     TAG from the test images: tiny:v1 (default),
#                                   tiny:v2, base-a:v1, base-a:v2, base-b:v1
#   KEEP=1 scripts/quickstart.sh    keep the work dir (printed) afterwards
#   LAYERLINK_SKIP_BUILD=1          use the binaries already in the target dir
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-tiny:v1}
REPO="demo/${TAG}"

say() { printf '\n==> %s\n' "$*"; }

if [[ "${LAYERLINK_SKIP_BUILD:-0}" != 1 ]]; then
  say "build"
  cargo build --workspace --bins
fi
REGISTRY=${CARGO_TARGET_DIR:-target}/debug/layerlink-registry
AGENT=${CARGO_TARGET_DIR:-target}/debug/layerlink-agent

say "test images (cached)"
bash scripts/build-test-images.sh >/dev/null
OCI="${LAYERLINK_CACHE:-/var/cache/layerlink}/images/oci"

WORK=$(mktemp -d /tmp/layerlink-quickstart.XXXXXX)
REG_PID=
cleanup() {
  if [[ -n "$REG_PID" ]]; then
    kill "$REG_PID" 2>/dev/null || true
    wait "$REG_PID" 2>/dev/null || true
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

cat >"$WORK/registry.toml" <<'TOML'
# One device; anyone on loopback may push (no [[publishers]]).
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["*"]
TOML

say "start the registry (data: $WORK/data)"
"$REGISTRY" serve --listen 127.0.0.1:0 --data "$WORK/data" --config "$WORK/registry.toml" \
  >"$WORK/registry.out" 2>"$WORK/registry.log" &
REG_PID=$!
URL=
for _ in $(seq 1 100); do
  URL=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$WORK/registry.out" | head -n1)
  [[ -n "$URL" ]] && break
  kill -0 "$REG_PID" 2>/dev/null || { cat "$WORK/registry.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$URL" ]] || { echo "registry did not start" >&2; cat "$WORK/registry.log" >&2; exit 1; }
HOST=${URL#http://}
echo "registry at $URL"

say "push $TAG with skopeo → $REPO"
skopeo --insecure-policy copy --dest-tls-verify=false "oci:$OCI:$TAG" "docker://$HOST/$REPO"

say "registry stats"
"$REGISTRY" stats --data "$WORK/data"

say "device sync"
"$AGENT" sync --server "$URL" --store "$WORK/store" --token tok-dev1 "$REPO"

say "sync again (nothing to do)"
"$AGENT" sync --server "$URL" --store "$WORK/store" --token tok-dev1 "$REPO"

say "checkout → $WORK/bundle"
"$AGENT" checkout --store "$WORK/store" "$REPO" "$WORK/bundle"
ls -la "$WORK/bundle" "$WORK/bundle/rootfs" | head -n 30

say "device status"
"$AGENT" status --store "$WORK/store"

say "devices known to the registry"
"$REGISTRY" devices --data "$WORK/data"

say "done"
