#!/usr/bin/env bash
# Coverage-guided fuzzing of layerlink with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: postcard_msgs archive_apply registry_ingest delta_apply compact_meta
# agent_json agent_config agent_trust)
# for SECONDS (default 60) and prints executions and crashes per target.
# Crash inputs are copied to fuzz/regressions/<target>/, which
# `cargo test -p layerlink-agent --test hostile` (archive_apply, postcard_msgs,
# agent_json, agent_config) and
# `cargo test -p layerlink-registry --test hostile_ingest` replay.
#
# Works on the stable toolchain via RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# nightly flags). FUZZ_SANITIZER=address|none (default: address, falling back
# to none when the sanitizer build fails). Needs: cargo install cargo-fuzz.
set -euo pipefail

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(postcard_msgs archive_apply registry_ingest delta_apply compact_meta agent_json agent_config agent_trust)

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }

python3 make_seeds.py
san="${FUZZ_SANITIZER:-address}"
if ! nice -n 5 cargo fuzz build -O -s "$san" >/tmp/layerlink-fuzz-build.log 2>&1; then
    if [ "$san" != none ]; then
        echo "sanitizer '$san' build failed (see /tmp/layerlink-fuzz-build.log); using -s none" >&2
        san=none
        nice -n 5 cargo fuzz build -O -s none
    else
        cat /tmp/layerlink-fuzz-build.log >&2
        exit 1
    fi
fi

summary=()
total_crashes=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "regressions/$t" "seeds/$t"
    end=$(( $(date +%s) + secs ))
    execs=0
    crashes=0
    # libFuzzer stops at the first crash: keep the input, restart until
    # the time is used up (at most 5 restarts).
    for _ in 1 2 3 4 5 6; do
        left=$(( end - $(date +%s) ))
        [ "$left" -le 0 ] && break
        log="/tmp/layerlink-fuzz-$t.log"
        before=$(ls "artifacts/$t" | wc -l)
        set +e
        nice -n 5 cargo fuzz run -O -s "$san" "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$left" -timeout=20 -rss_limit_mb=3072 -max_len=262144 \
            -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
        rc=$?
        set -e
        n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
        execs=$(( execs + ${n:-0} ))
        after=$(ls "artifacts/$t" | wc -l)
        if [ "$after" -gt "$before" ] || [ "$rc" -ne 0 ]; then
            for f in "artifacts/$t"/*; do
                [ -f "$f" ] || continue
                b=$(basename "$f")
                [ -e "regressions/$t/$b" ] || { cp "$f" "regressions/$t/$b"; crashes=$(( crashes + 1 )); }
            done
            echo "$t: fuzzer exited $rc; log: $log" >&2
            grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
            [ "$after" -gt "$before" ] || break   # failed without an input: give up
        else
            break
        fi
    done
    total_crashes=$(( total_crashes + crashes ))
    summary+=("$(printf '%-16s executions: %-10s crashes: %s (corpus: %s inputs)' "$t" "$execs" "$crashes" "$(ls "corpus/$t" | wc -l)")")
done

echo "== fuzz summary (${secs}s per target, sanitizer: $san) =="
printf '%s\n' "${summary[@]}"
[ "$total_crashes" -eq 0 ] || { echo "crash inputs kept under fuzz/regressions/; replay with cargo test" >&2; exit 1; }
