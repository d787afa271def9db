#!/usr/bin/env bash
# Test the ARM builds under QEMU user-mode emulation.
#
#   cross/test.sh [--skip-unit] [--skip-big] [--big-64] [--skip-e2e] [--skip-multiarch] TARGET...
#
# For each TARGET (see cross/build.sh for the list):
#   unit  `cargo test -p layerlink-proto -p layerlink-agent` for TARGET: unit
#         tests, integration tests and doctests, run by qemu (cargo runner).
#   big   (32-bit targets; --big-64 adds the 64-bit ones) 64-bit sizes and
#         offsets on the device: the device binary (cross/build.sh, profile
#         release-agent) runs `layerlink-agent apply-archive` on a dedup
#         archive whose layer holds a 4 GiB + 1 MiB file (bigarchive.py: size
#         in PAX and base-256, stamps around 2^31/2^32) followed by a hard link
#         and a small file; the committed layer is checked natively (size,
#         stamps, sha256, mtime, the file after it, the in-layer hard link).
#         Takes ~2-3 min per target.
#   e2e   the ARM agent against the native registry on loopback: push
#         base-a:v1 with skopeo, `layerlink-agent sync` + `checkout` under
#         qemu, compare OUT/rootfs with `umoci unpack` of the same image
#         (compare_trees.py: paths, types, content, mode, owner, mtime,
#         symlink targets, xattrs).
#   multi (multi-arch index) `skopeo copy --all` pushes an OCI index of
#         linux/amd64, linux/arm64 and linux/arm/v7 images of Debian's
#         busybox-static (scripts/build-multiarch-image.sh, cached); the ARM
#         agent syncs the index tag under qemu with its default platform:
#         status names its own platform's manifest, the checkout equals
#         `umoci unpack` of that image, /bin/busybox is an ELF for this
#         machine with the package's sha256, and the bundle's process
#         (config.json args, run by qemu) prints the image's platform;
#         `--platform linux/riscv64` gets exit 8 naming what the index has.
# Exits non-zero if any part fails; prints a summary table.
#
# Needs cross/install.sh (toolchains, qemu) and, for e2e, scripts/install-deps.sh
# (skopeo, umoci, jq); test images come from scripts/build-test-images.sh and
# scripts/build-multiarch-image.sh.
# Environment: LAYERLINK_REGISTRY_BIN (else built natively with cargo),
# LAYERLINK_CACHE (test images), CROSS_NICE (default 10).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

skip_unit=0 skip_big=0 skip_e2e=0 skip_multi=0 big64=0
targets=()
for a in "$@"; do
  case $a in
    --skip-unit) skip_unit=1 ;;
    --skip-big) skip_big=1 ;;
    --skip-e2e) skip_e2e=1 ;;
    --skip-multiarch) skip_multi=1 ;;
    --big-64) big64=1 ;;
    -h | --help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "cross/test: unknown option $a" >&2; exit 2 ;;
    *)
      cross_known_target "$a" || { echo "cross/test: unknown target $a (one of: ${CROSS_TARGETS[*]})" >&2; exit 2; }
      targets+=("$a")
      ;;
  esac
done
((${#targets[@]})) || { echo "usage: cross/test.sh [--skip-unit] [--skip-big] [--big-64] [--skip-e2e] [--skip-multiarch] TARGET..." >&2; exit 2; }

log() { printf '[cross/test %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
WORK=$(mktemp -d /var/tmp/layerlink-cross.XXXXXX)
REG_PID=''
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  [[ -n $REG_PID ]] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

declare -A RESULT
overall=0
record() { # TARGET PART VERDICT
  RESULT[$1/$2]=$3
  [[ $3 == ok* || $3 == skipped* ]] || overall=1
}

# --- unit tests ---------------------------------------------------------
run_unit() {
  local t=$1 start=$SECONDS
  log "$t: unit tests + doctests (layerlink-proto, layerlink-agent) under qemu"
  cross_runner "$t"
  # Tests that spawn the agent binary themselves (agent/tests/cli.rs) must go
  # through qemu too: binfmt_misc is not mounted. Same variable as tests/.
  # One test thread: qemu-user can deadlock a guest that forks while another
  # of its threads holds a lock (seen 2026-12-01: a child of the aarch64
  # `cli` test binary stuck between fork and exec for 17 min, 0 CPU).
  if LAYERLINK_AGENT_RUNNER="${CROSS_RUNNER[*]}" RUST_TEST_THREADS=1 \
    cross_cargo "$t" unwind test --no-fail-fast -p layerlink-proto -p layerlink-agent >"$WORK/unit-$t.log" 2>&1; then
    local n
    n=$(grep -E '^test result: ok' "$WORK/unit-$t.log" | awk '{s += $4} END {print s + 0}')
    record "$t" unit "ok ($n tests, $((SECONDS - start)) s)"
  else
    tail -60 "$WORK/unit-$t.log" >&2
    record "$t" unit "FAILED"
  fi
  grep -E '^test result:|Running|Doc-tests' "$WORK/unit-$t.log" >&2 || true
}

# --- the device binary --------------------------------------------------
AGENT=
build_agent() {
  local t=$1
  AGENT="$CARGO_TARGET_DIR/dist/$t/layerlink-agent"
  "$CROSS_DIR/build.sh" "$t" >"$WORK/build-$t.log" 2>&1 || {
    tail -40 "$WORK/build-$t.log" >&2
    return 1
  }
  tail -1 "$WORK/build-$t.log" >&2
}

# --- >4 GiB entry -------------------------------------------------------
BIG_ARCHIVE='' BIG_INFO=''
make_big_archive() {
  [[ -n $BIG_ARCHIVE ]] && return 0
  local key
  key=$(sha256sum "$CROSS_DIR/bigarchive.py" | cut -c1-16)
  BIG_ARCHIVE="$CROSS_CACHE/bigarchive-$key.tar.gz"
  BIG_INFO="$CROSS_CACHE/bigarchive-$key.json"
  if [[ ! -f $BIG_ARCHIVE || ! -f $BIG_INFO ]]; then
    log "generating $BIG_ARCHIVE (a 4 GiB+ entry, gzip'd to ~4 MB)"
    python3 "$CROSS_DIR/bigarchive.py" make "$BIG_ARCHIVE" >"$BIG_INFO.tmp" && mv "$BIG_INFO.tmp" "$BIG_INFO"
  fi
}

run_big() {
  local t=$1 start=$SECONDS
  cross_runner "$t"
  make_big_archive || { record "$t" big "FAILED (generator)"; return; }
  local store="$WORK/big-$t/store" diff_id
  diff_id=$(jq -r .diff_id "$BIG_INFO")
  mkdir -p "$WORK/big-$t"
  # The agent really writes the entry (no holes): say so plainly when the
  # disk (shared with other builds on CI machines) cannot hold it.
  local need free
  need=$(( $(jq -r .big_size "$BIG_INFO") + 256 * 1024 * 1024 ))
  free=$(df -B1 --output=avail "$WORK/big-$t" | tail -1 | tr -d ' ')
  if (( free < need )); then
    log "$t: only $free bytes free under $WORK, the >4 GiB entry needs $need"
    record "$t" big "FAILED (disk: $((free >> 20)) MiB free, needs $((need >> 20)))"
    rm -rf "$WORK/big-$t"
    return
  fi
  log "$t: applying a dedup archive with a $(jq -r .big_size "$BIG_INFO")-byte entry under qemu"
  if ! "${CROSS_RUNNER[@]}" "$AGENT" apply-archive --store "$store" --quiet "$BIG_ARCHIVE" >"$WORK/big-$t.log" 2>&1; then
    cat "$WORK/big-$t.log" >&2
    record "$t" big "FAILED (apply)"
    rm -rf "$WORK/big-$t"
    return
  fi
  cat "$WORK/big-$t.log" >&2
  local layer="$store/layers/${diff_id#sha256:}" ok=1
  local big after
  big="$layer/$(jq -r .big_path "$BIG_INFO")"
  after="$layer/$(jq -r .after_path "$BIG_INFO")"
  local link="$layer/big/file.link"
  python3 "$CROSS_DIR/bigarchive.py" check "$big" "$BIG_INFO" >&2 || ok=0
  [[ $(sha256sum <"$after" 2>/dev/null | cut -d' ' -f1) == "$(jq -r .after_sha256 "$BIG_INFO")" ]] ||
    { log "after.txt (the entry after the big one) missing or wrong"; ok=0; }
  [[ -f $link && $(stat -c %i "$link") == "$(stat -c %i "$big")" ]] ||
    { log "big/file.link is not a hard link to big/file.bin"; ok=0; }
  rm -rf "$WORK/big-$t"
  if ((ok)); then record "$t" big "ok ($((SECONDS - start)) s)"; else record "$t" big "FAILED (content)"; fi
}

# --- end to end against the native registry -----------------------------
# The RECIPE="…" of scripts/SCRIPT: its cached output is $CACHE/<what>-RECIPE.
script_recipe() { sed -n 's/^RECIPE="\(.*\)"$/\1/p' "$ROOT_DIR/scripts/$1"; }

REG_READY=0 REG_URL=''
# The native registry on loopback (device dev1/tok-dev1), started once for
# the e2e and multi-arch parts.
registry_start() {
  ((REG_READY == 1)) && return 0
  ((REG_READY == 2)) && return 1
  REG_READY=2
  local reg=${LAYERLINK_REGISTRY_BIN:-}
  if [[ -z $reg ]]; then
    log "building layerlink-registry (native, rustup toolchain, ./target)"
    (cd "$ROOT_DIR" && env -u CARGO_TARGET_DIR -u RUSTC_BOOTSTRAP nice -n "${CROSS_NICE:-10}" cargo build -p layerlink-registry --bin layerlink-registry) \
      >"$WORK/registry-build.log" 2>&1 || { tail -30 "$WORK/registry-build.log" >&2; return 1; }
    reg="$ROOT_DIR/target/debug/layerlink-registry"
  fi
  mkdir -p "$WORK/reg/data"
  cat >"$WORK/reg/registry.toml" <<'TOML'
[[devices]]
id = "dev1"
token = "tok-dev1"
repositories = ["*"]
TOML
  "$reg" serve --listen 127.0.0.1:0 --data "$WORK/reg/data" --config "$WORK/reg/registry.toml" \
    >"$WORK/reg/stdout" 2>"$WORK/reg/stderr" &
  REG_PID=$!
  local i
  for ((i = 0; i < 600; i++)); do
    REG_URL=$(grep -so 'http://127\.0\.0\.1:[0-9]*' "$WORK/reg/stdout" | head -1)
    [[ -n $REG_URL ]] && break
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $REG_URL ]] || { log "registry did not start"; cat "$WORK/reg/stderr" >&2; return 1; }
  log "registry at $REG_URL"
  REG_READY=1
}

E2E_READY=0 BUNDLE=''
IMAGE=base-a:v1
e2e_setup() {
  ((E2E_READY == 1)) && return 0
  ((E2E_READY == 2)) && return 1
  E2E_READY=2
  registry_start || return 1
  log "test images (scripts/build-test-images.sh; a no-op when cached)"
  bash "$ROOT_DIR/scripts/build-test-images.sh" >"$WORK/images.log" 2>&1 || { tail -30 "$WORK/images.log" >&2; return 1; }
  # The build of this tree's recipe ($CACHE/images is only the newest
  # build of any tree, and may point at a pruned one).
  local images
  images=${LAYERLINK_CACHE:-/var/cache/layerlink}/images-$(script_recipe build-test-images.sh)
  log "pushing $IMAGE"
  skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$images/oci:$IMAGE" "docker://${REG_URL#http://}/$IMAGE" \
    >&2 || { log "skopeo push failed"; cat "$WORK/reg/stderr" >&2; return 1; }
  BUNDLE="$WORK/umoci-bundle"
  umoci unpack --image "$images/oci:$IMAGE" "$BUNDLE" >"$WORK/umoci.log" 2>&1 ||
    { cat "$WORK/umoci.log" >&2; return 1; }
  E2E_READY=1
}

run_e2e() {
  local t=$1 start=$SECONDS
  cross_runner "$t"
  if ! e2e_setup; then
    record "$t" e2e "FAILED (setup)"
    return
  fi
  local dir="$WORK/e2e-$t"
  mkdir -p "$dir"
  log "$t: agent sync $IMAGE from $REG_URL under qemu"
  if ! "${CROSS_RUNNER[@]}" "$AGENT" sync --server "$REG_URL" --store "$dir/store" --token tok-dev1 \
    --platform linux/amd64 "$IMAGE" >"$dir/sync.log" 2>&1; then
    cat "$dir/sync.log" >&2
    tail -20 "$WORK/reg/stderr" >&2
    record "$t" e2e "FAILED (sync)"
    return
  fi
  log "$t: agent checkout"
  if ! "${CROSS_RUNNER[@]}" "$AGENT" checkout --store "$dir/store" "$IMAGE" "$dir/out" >"$dir/checkout.log" 2>&1; then
    cat "$dir/checkout.log" >&2
    record "$t" e2e "FAILED (checkout)"
    return
  fi
  if python3 "$CROSS_DIR/compare_trees.py" "$dir/out/rootfs" "$BUNDLE/rootfs" >"$dir/compare.log" 2>&1; then
    cat "$dir/compare.log" >&2
    record "$t" e2e "ok ($((SECONDS - start)) s)"
  else
    cat "$dir/compare.log" >&2
    record "$t" e2e "FAILED (trees differ)"
  fi
  rm -rf "$dir"
}

# --- multi-arch index ----------------------------------------------------
# scripts/build-multiarch-image.sh (cached) makes linux/amd64, linux/arm64
# and linux/arm/v7 images of Debian's busybox-static and an OCI index of the
# three; `skopeo copy --all` pushes the index as multi:v1.
MULTI_READY=0 MULTI_DIR=''
MULTI_TAG=multi:v1
multi_setup() {
  ((MULTI_READY == 1)) && return 0
  ((MULTI_READY == 2)) && return 1
  MULTI_READY=2
  registry_start || return 1
  log "multi-arch image (scripts/build-multiarch-image.sh; a no-op when cached)"
  bash "$ROOT_DIR/scripts/build-multiarch-image.sh" >"$WORK/multiarch.log" 2>&1 ||
    { tail -30 "$WORK/multiarch.log" >&2; return 1; }
  MULTI_DIR=${LAYERLINK_CACHE:-/var/cache/layerlink}/multiarch-$(script_recipe build-multiarch-image.sh)
  [[ -f $MULTI_DIR/platforms.txt ]] || { log "no $MULTI_DIR/platforms.txt"; return 1; }
  log "pushing the index $MULTI_TAG (skopeo copy --all)"
  skopeo --insecure-policy copy -q --all --dest-tls-verify=false "oci:$MULTI_DIR/oci:$MULTI_TAG" \
    "docker://${REG_URL#http://}/$MULTI_TAG" >&2 || { log "skopeo push failed"; cat "$WORK/reg/stderr" >&2; return 1; }
  MULTI_READY=1
}

# ELF machine of FILE as a name (EM_X86_64 62, EM_AARCH64 183, EM_ARM 40).
elf_machine() {
  python3 - "$1" <<'PY'
import struct, sys
h = open(sys.argv[1], "rb").read(20)
assert h[:4] == b"\x7fELF", "not an ELF file"
order = "<" if h[5] == 1 else ">"
m = struct.unpack(order + "H", h[18:20])[0]
print({62: "x86_64", 183: "aarch64", 40: "arm"}.get(m, "machine-%d" % m), 64 if h[4] == 2 else 32)
PY
}

# The ARM agent under qemu syncs the index tag with its default platform,
# gets its own platform's manifest (status --json names it, not another),
# checks out a tree equal to `umoci unpack` of that platform's image, whose
# /bin/busybox is an ELF for this machine; the bundle's process (the
# image's Entrypoint + Cmd from config.json) runs under qemu and prints the
# image's platform. A platform the index lacks gets exit 8 naming it.
run_multiarch() {
  local t=$1 start=$SECONDS platform tag elf
  case $t in
    aarch64-*) platform=linux/arm64 tag=multi-arm64:v1 elf="aarch64 64" ;;
    armv7-*) platform=linux/arm/v7 tag=multi-armv7:v1 elf="arm 32" ;;
    *) record "$t" multi "FAILED (no platform for $t)"; return ;;
  esac
  cross_runner "$t"
  if ! multi_setup; then
    record "$t" multi "FAILED (setup)"
    return
  fi
  local dir="$WORK/multi-$t" want_manifest want_sha
  mkdir -p "$dir"
  read -r _ _ want_manifest want_sha _ < <(grep "^$tag " "$MULTI_DIR/platforms.txt")
  multi_fail() { # WHY (prints the logs of $dir)
    cat "$dir"/*.log >&2 2>/dev/null
    record "$t" multi "FAILED ($1)"
    rm -rf "$dir"
  }
  log "$t: agent sync $MULTI_TAG (an index) under qemu, default platform"
  "${CROSS_RUNNER[@]}" "$AGENT" sync --server "$REG_URL" --store "$dir/store" --token tok-dev1 "$MULTI_TAG" \
    >"$dir/sync.log" 2>&1 || { tail -20 "$WORK/reg/stderr" >&2; multi_fail sync; return; }
  local got
  got=$("${CROSS_RUNNER[@]}" "$AGENT" status --store "$dir/store" --json |
    jq -r --arg i "$MULTI_TAG" '.images[] | select(.image == $i) | .manifest_digest')
  if [[ $got != "$want_manifest" ]]; then
    log "$t: synced manifest ${got:-none}, want $want_manifest ($tag, $platform)"
    multi_fail "wrong manifest"
    return
  fi
  "${CROSS_RUNNER[@]}" "$AGENT" checkout --store "$dir/store" "$MULTI_TAG" "$dir/out" >"$dir/checkout.log" 2>&1 ||
    { multi_fail checkout; return; }
  umoci unpack --image "$MULTI_DIR/oci:$tag" "$dir/umoci" >"$dir/umoci.log" 2>&1 || { multi_fail "umoci unpack"; return; }
  python3 "$CROSS_DIR/compare_trees.py" "$dir/out/rootfs" "$dir/umoci/rootfs" >"$dir/compare.log" 2>&1 ||
    { multi_fail "trees differ from umoci unpack of $tag"; return; }
  local busybox="$dir/out/rootfs/bin/busybox" machine
  machine=$(elf_machine "$busybox")
  if [[ $machine != "$elf" || $(sha256sum <"$busybox" | cut -d' ' -f1) != "$want_sha" ]]; then
    log "$t: /bin/busybox is ELF '$machine' (want '$elf'), sha256 $(sha256sum <"$busybox" | cut -c1-16)…, want ${want_sha:0:16}…"
    multi_fail "wrong-arch busybox"
    return
  fi
  # The bundle's process: args[0] inside the rootfs, run by qemu.
  local args=() out
  mapfile -t args < <(jq -r '.process.args[]' "$dir/out/config.json")
  out=$("${CROSS_RUNNER[@]}" "$dir/out/rootfs${args[0]}" "${args[@]:1}" 2>&1)
  log "$t: ${args[*]} -> $out"
  [[ $out == "layerlink multiarch $platform" ]] || { multi_fail "process printed '$out'"; return; }
  # No manifest for the platform: exit 8, naming it and what the index has.
  local code=0
  "${CROSS_RUNNER[@]}" "$AGENT" sync --server "$REG_URL" --store "$dir/store2" --token tok-dev1 \
    --platform linux/riscv64 "$MULTI_TAG" >"$dir/refused.log" 2>&1 || code=$?
  if [[ $code != 8 ]] || ! grep -q 'linux/riscv64' "$dir/refused.log" ||
    ! grep -q 'linux/amd64, linux/arm64, linux/arm/v7' "$dir/refused.log"; then
    log "$t: sync --platform linux/riscv64 exited $code"
    multi_fail "no-match not refused with exit 8"
    return
  fi
  log "$t: $(cat "$dir/compare.log"); busybox $machine-bit ok; refusal: $(head -1 "$dir/refused.log")"
  record "$t" multi "ok ($((SECONDS - start)) s)"
  rm -rf "$dir"
}

total_start=$SECONDS
for t in "${targets[@]}"; do
  if ((skip_unit)); then record "$t" unit skipped; else run_unit "$t"; fi
  want_big=1
  if ((skip_big)); then
    record "$t" big skipped
    want_big=0
  elif [[ $t == aarch64-* && $big64 == 0 ]]; then
    record "$t" big "skipped (64-bit)"
    want_big=0
  fi
  ((skip_e2e)) && record "$t" e2e skipped
  ((skip_multi)) && record "$t" multi skipped
  ((want_big == 0 && skip_e2e == 1 && skip_multi == 1)) && continue
  log "$t: building the device binary (cross/build.sh)"
  if ! build_agent "$t"; then
    ((want_big)) && record "$t" big "FAILED (build)"
    ((skip_e2e)) || record "$t" e2e "FAILED (build)"
    ((skip_multi)) || record "$t" multi "FAILED (build)"
    continue
  fi
  ((want_big)) && run_big "$t"
  ((skip_e2e)) || run_e2e "$t"
  ((skip_multi)) || run_multiarch "$t"
done

echo
printf '| %-32s | %-24s | %-24s | %-24s | %-24s |\n' target "unit (proto+agent)" ">4 GiB entry" "e2e sync vs umoci" "multi-arch index"
echo "|----------------------------------|--------------------------|--------------------------|--------------------------|--------------------------|"
for t in "${targets[@]}"; do
  printf '| %-32s | %-24s | %-24s | %-24s | %-24s |\n' "$t" "${RESULT[$t/unit]}" "${RESULT[$t/big]}" "${RESULT[$t/e2e]}" "${RESULT[$t/multi]}"
done
echo
echo "cross/test: $((SECONDS - total_start)) s"
exit $overall
