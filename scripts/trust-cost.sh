#!/usr/bin/env bash
# CPU cost of the agent's trust policy (--trust-key) on a sync: the same
# sync with and without a key, agent user+sys CPU (getrusage).
#
#   AGENT_BIN=… REGISTRY_BIN=… [IMAGE=tiny:v1] [RUNS=10] scripts/trust-cost.sh
#
# Pushes IMAGE from the cached test images (scripts/build-test-images.sh)
# with skopeo, signs it with Python `cryptography` (the sign-venv of
# scripts/install-deps.sh, tests/sign/cosign_sign.py) and pushes the
# signature as cosign does (tag sha256-<hex>.sig), then times RUNS cold
# syncs (fresh store) and RUNS up-to-date syncs, each with and without the
# key, interleaved. Prints mean CPU seconds per sync.
# AGENT_RUNNER (e.g. "qemu-aarch64") runs a cross-built agent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${LAYERLINK_CACHE:-/var/cache/layerlink}
image=${IMAGE:-tiny:v1}
runs=${RUNS:-10}
py=${LAYERLINK_SIGN_PYTHON:-$cache/sign-venv/bin/python}
read -r -a runner <<<"${AGENT_RUNNER:-}"
: "${AGENT_BIN:?path of layerlink-agent}" "${REGISTRY_BIN:?path of layerlink-registry}"

tmp=$(mktemp -d)
regpid=
cleanup() {
  [[ -n $regpid ]] && kill "$regpid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
cat >"$tmp/registry.toml" <<'EOF'
[[devices]]
id = "bench"
token = "tok-bench"
repositories = ["bench/*"]
EOF
mkdir "$tmp/data"
"$REGISTRY_BIN" serve --listen 127.0.0.1:0 --data "$tmp/data" --config "$tmp/registry.toml" \
  >"$tmp/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 100); do
  host=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$tmp/registry.log" | head -1)
  [[ -n $host ]] && break
  sleep 0.2
done
[[ -n $host ]] || { cat "$tmp/registry.log"; exit 1; }
repo=bench/${image%%:*}
tag=${image#*:}
skopeo --insecure-policy copy -q --dest-tls-verify=false \
  "oci:$cache/images/oci:$image" "docker://$host/$repo:$tag"
accept='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
digest=sha256:$(curl -fsS -H "Accept: $accept" "http://$host/v2/$repo/manifests/$tag" | sha256sum | cut -d' ' -f1)

# Sign (independent implementation) and push the cosign artifact.
"$py" "$here/tests/sign/cosign_sign.py" keygen "$tmp/keys"
"$py" "$here/tests/sign/cosign_sign.py" sign "$tmp/keys/cosign.key" "$host/$repo" "$digest" "tag=$tag" >"$tmp/sig.json"
"$py" - "$tmp" "$host" "$repo" "$digest" <<'EOF'
import hashlib, json, sys, urllib.request
tmp, host, repo, digest = sys.argv[1:]
sig = json.load(open(f"{tmp}/sig.json"))
def blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    urllib.request.urlopen(urllib.request.Request(
        f"http://{host}/v2/{repo}/blobs/uploads/?digest={d}", data=data, method="POST"))
    return d
payload = sig["payload"].encode()
p = blob(payload)
config = json.dumps({"architecture": "", "os": "", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [p]}}).encode()
c = blob(config)
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config), "digest": c},
    "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": len(payload),
                "digest": p, "annotations": {"dev.cosignproject.cosign/signature": sig["signature"]}}],
}).encode()
urllib.request.urlopen(urllib.request.Request(
    f"http://{host}/v2/{repo}/manifests/{digest.replace(':', '-')}.sig", data=manifest, method="PUT",
    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
EOF

# cpu STORE [ARGS...] -> user+sys seconds of one sync (getrusage of the
# child: microsecond resolution, where /usr/bin/time has 10 ms)
cpu() {
  local store=$1
  shift
  python3 - "${runner[@]}" "$AGENT_BIN" sync -q --server "http://$host" --store "$store" \
    --token tok-bench --platform linux/amd64 "$@" "$repo:$tag" <<'PY'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.6f}")
PY
}
declare -A sum=()
for kind in cold uptodate; do
  for mode in plain signed; do sum[$kind-$mode]=0; done
done
for i in $(seq "$runs"); do
  for mode in plain signed; do
    args=()
    [[ $mode == signed ]] && args=(--trust-key "$tmp/keys/cosign.pub")
    rm -rf "$tmp/store-$mode"
    t=$(cpu "$tmp/store-$mode" "${args[@]}")
    sum[cold-$mode]=$(echo "${sum[cold-$mode]} + $t" | bc)
    t=$(cpu "$tmp/store-$mode" "${args[@]}")
    sum[uptodate-$mode]=$(echo "${sum[uptodate-$mode]} + $t" | bc)
  done
done
echo "trust-cost: $image ($digest), $runs runs each, mean agent CPU (user+sys) per sync:"
for kind in cold uptodate; do
  p=$(echo "scale=6; ${sum[$kind-plain]} / $runs" | bc)
  s=$(echo "scale=6; ${sum[$kind-signed]} / $runs" | bc)
  printf '  %-9s without key %8.4f s   with --trust-key %8.4f s   (%+.4f s)\n' "$kind" "$p" "$s" "$(echo "$s - $p" | bc)"
done
