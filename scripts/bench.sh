#!/usr/bin/env bash
# The sync benchmark (issues 2, 3, 11, 12): layerlink vs skopeo copy + umoci
# unpack vs OSTree (object pulls and static deltas), in one run.
#
#   scripts/bench.sh                                   # writes bench/RESULTS.md and prints it
#   LAYERLINK_BENCH_SCENARIOS=update scripts/bench.sh  # one scenario (keys or numbers, comma-separated)
#
# 1. builds the release registry, the size-optimised device agent
#    (--profile release-agent, what ships to devices) and the bench driver;
# 2. makes sure the cached test images exist (scripts/build-test-images.sh);
# 3. runs the bench driver (tests/src/bench/): one registry, the scenarios'
#    images pushed with skopeo; the same images committed into an OSTree
#    archive repo with static deltas for the scenarios' pairs, served by
#    `python3 -m http.server`; then each scenario for each tool on fresh
#    device dirs.
#
# Scenarios (LAYERLINK_BENCH_SCENARIOS): 0=tiny 1=cold 2=base-b 3=hello
# 4=cold-upd 5=sibling 6=update. Takes ~10 min on 2 cores once built
# (longer when the machine is busy); one scenario takes 1-3 min. The
# benchmark reports: a missed target is printed as MISS and does not fail
# the script.
#
# The agent is linked the way the device build is (cross/: static, not
# position-independent): `-C target-feature=+crt-static -C
# relocation-model=static` for the host's gnu target. A dynamically linked,
# PIE glibc build carries ~800 KiB more resident memory that the device
# binary does not have (ld.so, libc.so, relocated pages: `--version` peaks at
# 2,180 KiB dynamic vs 1,388 KiB static on this host);
# LAYERLINK_BENCH_AGENT_LINK=dynamic measures that build instead.
#
# Environment: LAYERLINK_BENCH_SCENARIOS (default: all); LAYERLINK_BENCH_TOOLS
# (comma-separated: layerlink, layerlink-no-deltas (incremental scenarios only),
# skopeo, ostree, ostree-objects, ostree-delta;
# default: all); LAYERLINK_BENCH_AGENT_PROFILE=release to measure the plain
# release agent instead; LAYERLINK_BENCH_REPS (runs of the base-a update
# scenario, default 5); LAYERLINK_BENCH_OUT (default bench/RESULTS.md, or
# bench/RESULTS-partial.md when only some scenarios run); LAYERLINK_CACHE
# (image cache), CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${LAYERLINK_BENCH_AGENT_PROFILE:-release-agent}
if [[ -n ${LAYERLINK_BENCH_SCENARIOS:-} ]]; then
  out=${LAYERLINK_BENCH_OUT:-bench/RESULTS-partial.md}
else
  out=${LAYERLINK_BENCH_OUT:-bench/RESULTS.md}
fi
target=${CARGO_TARGET_DIR:-target}

for tool in skopeo umoci ostree python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || {
    echo "bench.sh: $tool is missing (scripts/install-deps.sh installs it; /usr/bin/time is Debian's 'time')" >&2
    exit 2
  }
done

echo "==> build (release registry, $profile agent, bench driver)" >&2
cargo build --release -p layerlink-registry --bin layerlink-registry
host=$(rustc -vV | sed -n 's/^host: //p')
if [[ ${LAYERLINK_BENCH_AGENT_LINK:-static} == dynamic ]]; then
  cargo build --profile "$profile" -p layerlink-agent --bin layerlink-agent
  agent_bin="$target/$profile/layerlink-agent"
  agent_label="--profile $profile"
else
  # --target keeps these flags away from build scripts and proc macros.
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --profile "$profile" -p layerlink-agent --bin layerlink-agent --target "$host"
  agent_bin="$target/$host/$profile/layerlink-agent"
  agent_label="--profile $profile, static non-PIE like the device build"
fi
cargo build --release -p layerlink-tests --bin layerlink-bench

echo "==> test images" >&2
bash scripts/build-test-images.sh >&2

echo "==> bench" >&2
"$target/release/layerlink-bench" \
  --registry-bin "$target/release/layerlink-registry" \
  --agent-bin "$agent_bin" \
  --agent-label "$agent_label" \
  --command "$(for v in LAYERLINK_BENCH_SCENARIOS LAYERLINK_BENCH_TOOLS LAYERLINK_BENCH_AGENT_PROFILE LAYERLINK_BENCH_AGENT_LINK LAYERLINK_BENCH_REPS; do
    [[ -n ${!v:-} ]] && printf '%s=%s ' "$v" "${!v}"
  done)scripts/bench.sh" \
  --reps "${LAYERLINK_BENCH_REPS:-5}" \
  --out "$out"
