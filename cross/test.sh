#!/usr/bin/env bash
# Test the ARM builds under QEMU user-mode emulation.
#
#   cross/test.sh [--skip-unit] [--skip-big] [--big-64] [--skip-e2e] TARGET...
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
# Exits non-zero if any part fails; prints a summary table.
#
# Needs cross/install.sh (toolchains, qemu) and, for e2e, scripts/install-deps.sh
# (skopeo, umoci); test images come from scripts/build-test-images.sh.
# Environment: LAYERLINK_REGISTRY_BIN (else built natively with cargo),
# LAYERLINK_CACHE (test images), CROSS_NICE (default 10).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

skip_unit=0 skip_big=0 skip_e2e=0 big64=0
targets=()
for a in "$@"; do
  case $a in
    --skip-unit) skip_unit=1 ;;
    --skip-big) skip_big=1 ;;
    --skip-e2e) skip_e2e=1 ;;
    --big-64) big64=1 ;;
    -h | --help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "cross/test: unknown option $a" >&2; exit 2 ;;
    *)
      cross_known_target "$a" || { echo "cross/test: unknown target $a (one of: ${CROSS_TARGETS[*]})" >&2; exit 2; }
      targets+=("$a")
      ;;
  esac
done
((${#targets[@]})) || { echo "usage: cross/test.sh [--skip-unit] [--skip-big] [--big-64] [--skip-e2e] TARGET..." >&2; exit 2; }

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
  if LAYERLINK_AGENT_RUNNER="${CROSS_RUNNER[*]}" \
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
E2E_READY=0 REG_URL='' BUNDLE=''
IMAGE=base-a:v1
e2e_setup() {
  ((E2E_READY)) && return 0
  ((E2E_READY == 2)) && return 1
  E2E_READY=2
  local reg=${LAYERLINK_REGISTRY_BIN:-}
  if [[ -z $reg ]]; then
    log "building layerlink-registry (native, rustup toolchain, ./target)"
    (cd "$ROOT_DIR" && env -u CARGO_TARGET_DIR -u RUSTC_BOOTSTRAP nice -n "${CROSS_NICE:-10}" cargo build -p layerlink-registry --bin layerlink-registry) \
      >"$WORK/registry-build.log" 2>&1 || { tail -30 "$WORK/registry-build.log" >&2; return 1; }
    reg="$ROOT_DIR/target/debug/layerlink-registry"
  fi
  log "test images (scripts/build-test-images.sh; a no-op when cached)"
  bash "$ROOT_DIR/scripts/build-test-images.sh" >"$WORK/images.log" 2>&1 || { tail -30 "$WORK/images.log" >&2; return 1; }
  local images=${LAYERLINK_CACHE:-/var/cache/layerlink}/images
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
    REG_URL=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/reg/stdout" | head -1)
    [[ -n $REG_URL ]] && break
    kill -0 "$REG_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $REG_URL ]] || { log "registry did not start"; cat "$WORK/reg/stderr" >&2; return 1; }
  log "registry at $REG_URL; pushing $IMAGE"
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
  ((want_big == 0 && skip_e2e == 1)) && continue
  log "$t: building the device binary (cross/build.sh)"
  if ! build_agent "$t"; then
    ((want_big)) && record "$t" big "FAILED (build)"
    ((skip_e2e)) || record "$t" e2e "FAILED (build)"
    continue
  fi
  ((want_big)) && run_big "$t"
  ((skip_e2e)) || run_e2e "$t"
done

echo
printf '| %-32s | %-24s | %-24s | %-24s |\n' target "unit (proto+agent)" ">4 GiB entry" "e2e sync vs umoci"
echo "|----------------------------------|--------------------------|--------------------------|--------------------------|"
for t in "${targets[@]}"; do
  printf '| %-32s | %-24s | %-24s | %-24s |\n' "$t" "${RESULT[$t/unit]}" "${RESULT[$t/big]}" "${RESULT[$t/e2e]}"
done
echo
echo "cross/test: $((SECONDS - total_start)) s"
exit $overall
