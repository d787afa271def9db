#!/usr/bin/env bash
# The project's test command (README "Tests"; CI runs it from .ci/run).
#
#   1. tools (scripts/install-deps.sh) and the cached real test images
#      (scripts/build-test-images.sh; first run ~2 min, then instant;
#      scripts/build-multiarch-image.sh: ~10 s, then instant)
#   2. build every binary (the e2e tests run the real registry and agent)
#   3. cargo fmt --check, cargo clippy -D warnings
#   4. the ARM cross build + QEMU tests (cross/test.sh), when present, and
#      the agent size budgets (cross/build.sh --enforce)
#   5. the fuzz targets (scripts/fuzz.sh, short fixed time each)
#   6. the slower tier: the #[ignore]d tests, in a release build (real
#      layers ingest and rebuild byte-exactly; the held-set check on 10k files)
#   7. the end-to-end suites that exercise storage again on the production
#      backends (LAYERLINK_TEST_BACKEND=postgres-s3: each registry gets a
#      PostgreSQL cluster and a Garage bucket of its own)
#   8. cargo test --workspace — last, so the output ends with its summary
#
# Environment: LAYERLINK_CACHE (image cache dir), LAYERLINK_SKIP_CROSS=1
# (skip step 4), CARGO_TARGET_DIR as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "test images"
bash scripts/build-test-images.sh
bash scripts/build-multiarch-image.sh

step "build"
cargo build --workspace --bins

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

# ---------------------------------------------------------------------------
# Cross (ARM) builds and QEMU user-mode tests: owned by cross/ (see
# shared/cross.md). cross/test.sh installs its own toolchain via
# cross/install.sh.
if [[ -f cross/test.sh && "${LAYERLINK_SKIP_CROSS:-0}" != 1 ]]; then
  step "cross builds + QEMU tests (cross/test.sh)"
  bash cross/install.sh
  # The registry the QEMU-run agents sync from: the one built above (else
  # cross/test.sh builds its own in ./target, ~8 min on 2 cores).
  reg_bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/layerlink-registry"
  [[ -x $reg_bin ]] || reg_bin=""
  # one 64-bit and one 32-bit target, both the static form flashed on gateways
  LAYERLINK_REGISTRY_BIN="$reg_bin" \
    bash cross/test.sh aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
  step "agent size budgets (static, TLS: aarch64 <= 1.5 MiB, armv7 <= 1.25 MiB)"
  # The binaries cross/test.sh just built: an incremental no-op build, then
  # the size check, which fails CI when a budget is broken.
  bash cross/build.sh aarch64-unknown-linux-musl --enforce
  bash cross/build.sh armv7-unknown-linux-musleabihf --enforce
fi
# ---------------------------------------------------------------------------

step "fuzz targets: fmt, build, ${LAYERLINK_FUZZ_SECS:-20} s each (fails on a crash; crash inputs land in fuzz/regressions/)"
cargo fmt --manifest-path fuzz/Cargo.toml --all --check
bash scripts/fuzz.sh "${LAYERLINK_FUZZ_SECS:-20}"

step "doc tests"
cargo test --workspace --doc

# Tests too slow for a debug build: named here so that none is skipped.
step "slower tier: the #[ignore]d tests (release build)"
LAYERLINK_TEST_OCI="${LAYERLINK_CACHE:-/var/cache/layerlink}/images/oci" \
  cargo test --release -p layerlink-registry --lib -- --ignored

# The e2e tests find the binaries built above; no need to rebuild them.
export LAYERLINK_SKIP_BUILD=1

# `--workspace` keeps the features of the main run below (a `-p` run would
# rebuild the registry library with the tests crate's feature set).
step "e2e suites on PostgreSQL + S3 (LAYERLINK_TEST_BACKEND=postgres-s3)"
# (The suites whose checks look only through the registry's API, the agent
# and the peers; gc_e2e, s3_e2e, postgres_e2e … inspect the storage itself
# and pick their backends explicitly.)
pg_s3_failed=0
LAYERLINK_TEST_BACKEND=postgres-s3 cargo test --workspace --no-fail-fast \
  --test sync_e2e --test edit_e2e --test lifecycle_e2e --test delta_e2e || pg_s3_failed=1

step "tests"
cargo test --workspace --all-targets --no-fail-fast
if ((pg_s3_failed)); then
  echo "FAILED: the e2e suites on PostgreSQL + S3 (see the step above)" >&2
  exit 1
fi
