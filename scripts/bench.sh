#!/usr/bin/env bash
# The sync benchmark (issues 2 and 3): layerlink vs skopeo copy + umoci unpack.
#
#   scripts/bench.sh            # writes bench/RESULTS.md and prints it
#
# 1. builds the release registry, the size-optimised device agent
#    (--profile release-agent, what ships to devices) and the bench driver;
# 2. makes sure the cached test images exist (scripts/build-test-images.sh);
# 3. runs tests/src/bin/layerlink-bench.rs: one registry, every image pushed
#    with skopeo, then each scenario on fresh device dirs for both sides.
#
# Takes ~3-4 min on 2 cores once built (longer when the machine is busy).
# The benchmark reports: a missed target is printed as MISS and does not
# fail the script.
#
# Environment: LAYERLINK_BENCH_AGENT_PROFILE=release to measure the plain
# release agent instead; LAYERLINK_BENCH_REPS (runs of the update scenario,
# default 5); LAYERLINK_BENCH_OUT (default bench/RESULTS.md);
# LAYERLINK_CACHE (image cache), CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${LAYERLINK_BENCH_AGENT_PROFILE:-release-agent}
out=${LAYERLINK_BENCH_OUT:-bench/RESULTS.md}
target=${CARGO_TARGET_DIR:-target}

for tool in skopeo umoci /usr/bin/time; do
  command -v "$tool" >/dev/null || {
    echo "bench.sh: $tool is missing (scripts/install-deps.sh; /usr/bin/time is Debian's 'time')" >&2
    exit 2
  }
done

echo "==> build (release registry, $profile agent, bench driver)" >&2
cargo build --release -p layerlink-registry --bin layerlink-registry
cargo build --profile "$profile" -p layerlink-agent --bin layerlink-agent
cargo build --release -p layerlink-tests --bin layerlink-bench

echo "==> test images" >&2
bash scripts/build-test-images.sh >&2

echo "==> bench" >&2
"$target/release/layerlink-bench" \
  --registry-bin "$target/release/layerlink-registry" \
  --agent-bin "$target/$profile/layerlink-agent" \
  --agent-label "--profile $profile" \
  --command "${LAYERLINK_BENCH_AGENT_PROFILE:+LAYERLINK_BENCH_AGENT_PROFILE=$profile }${LAYERLINK_BENCH_REPS:+LAYERLINK_BENCH_REPS=$LAYERLINK_BENCH_REPS }scripts/bench.sh" \
  --reps "${LAYERLINK_BENCH_REPS:-5}" \
  --out "$out"
