#!/usr/bin/env bash
# Power-cut and network-fault harnesses for the agent (issue 6).
#
#   scripts/faults.sh                       # full run: 210 power cuts, 60 network faults
#   CUTS=30 FAULTS=15 SEED=7 scripts/faults.sh   # smaller run / replay a seed
#
# Builds the release registry and agent, then runs
# `layerlink-faults power` and `layerlink-faults net` (tests/src/bin/layerlink-faults.rs)
# and prints a summary table with the commit it ran on. Every power cut's
# checkout is compared with `umoci unpack`; the survival figure counts only
# cuts that hit a running sync, cuts that landed after the sync had finished
# are reported on their own line. Failures print as `FAIL ...` lines with the seed
# to replay; the script exits 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."

CUTS=${CUTS:-210}
FAULTS=${FAULTS:-60}
SEED=${SEED:-$(date +%s)}
target=${CARGO_TARGET_DIR:-target}

nice -n 5 cargo build --release -p layerlink-registry -p layerlink-agent || exit 2
nice -n 5 cargo build -p layerlink-tests --bin layerlink-faults || exit 2
bin="$target/debug/layerlink-faults"
export LAYERLINK_SKIP_BUILD=1
# Work dirs (stores, registry data) on tmpfs by default: a SIGKILL loses no
# page cache, so this tests the same thing and copies stores much faster.
export TMPDIR=${FAULTS_TMPDIR:-/dev/shm}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit+dirty"; fi

log=$(mktemp)
status=0
echo "== power cuts: $CUTS cuts, seed $SEED"
"$bin" power --cuts "$CUTS" --seed "$SEED" --release | tee -a "$log" || status=1
echo "== network faults: $FAULTS faults, seed $SEED"
"$bin" net --faults "$FAULTS" --seed "$SEED" --release | tee -a "$log" || status=1

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
read -r _ _ ps pt pex pw _ pa pas < <(grep '^RESULT power' "$log" || echo "RESULT power 0 0 0 0 0 0 0")
read -r _ _ ns nt nex nw _ nf < <(grep '^RESULT net' "$log" || echo "RESULT net 0 0 0 0 0 0")
echo
echo "| harness (seed $SEED, commit $commit) | survived / tried | re-downloaded total | worst single run |"
echo "|---|---|---|---|"
echo "| power cuts (SIGKILL) that hit a running sync | $ps / $pt | $(mib "$pex") | $(mib "$pw") |"
echo "| power cuts after the sync had finished (not counted above) | $pas / $pa | - | - |"
echo "| network faults (${nf} fired) | $ns / $nt syncs | $(mib "$nex") | $(mib "$nw") |"
grep -E '^(FAIL|always-failing)' "$log"
rm -f "$log"
exit $status
