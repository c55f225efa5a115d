#!/usr/bin/env bash
# Builds the libFuzzer targets on the stable toolchain (the coverage
# instrumentation cargo-fuzz asks rustc for, without a sanitizer) and runs
# each for a while over its corpus.
#
#   fuzz/run.sh [seconds per target] [target ...]     (default: 30 s, all)
#   MISSIVE_FUZZ_RUNS=10000000 fuzz/run.sh 0           (a number of inputs instead)
#
# The committed seeds in fuzz/corpus/<target> are read; new inputs that reach
# new code go to $MISSIVE_FUZZ_WORK/<target> (kept across runs on this
# machine). A crash leaves its input in fuzz/artifacts/<target> and fails
# the run. Reproduce one with:
#   fuzz/run.sh 0 <target> -- fuzz/artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
targets=()
extra=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    targets+=("$1"); shift
done
[ ${#targets[@]} -gt 0 ] || targets=(pdu federation_transaction sync_filter sliding_sync_request client_request thumbnail url_preview_html)

export CARGO_TARGET_DIR="${MISSIVE_FUZZ_TARGET_DIR:-/var/tmp/missive-fuzz-target}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit target keeps build scripts and proc macros (built for the
# host) out of the instrumentation.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --bins --target "$triple"

# Findings go here (fuzz/artifacts unless MISSIVE_FUZZ_ARTIFACTS says).
artifacts="${MISSIVE_FUZZ_ARTIFACTS:-artifacts}"
status=0
for t in "${targets[@]}"; do
    work="${MISSIVE_FUZZ_WORK:-/var/tmp/missive-fuzz-work}/$t"
    mkdir -p "corpus/$t" "$artifacts/$t" "$work"
    bin="$CARGO_TARGET_DIR/$triple/release/$t"
    if [ ${#extra[@]} -gt 0 ]; then
        "$bin" "${extra[@]}" || status=1
        continue
    fi
    if [ -n "${MISSIVE_FUZZ_RUNS:-}" ]; then
        echo "== fuzzing $t for $MISSIVE_FUZZ_RUNS inputs"
        budget=(-runs="$MISSIVE_FUZZ_RUNS")
    else
        echo "== fuzzing $t for ${seconds}s"
        budget=(-max_total_time="$seconds")
    fi
    # -rss_limit_mb: an input that makes a target hold more is a finding.
    log="$artifacts/$t/last-run.log"
    rc=0
    "$bin" "$work" "corpus/$t" "${budget[@]}" -rss_limit_mb=1024 -timeout=10 \
        -artifact_prefix="$artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^Done [0-9]+ runs in' "$log" || true
    if [ $rc -ne 0 ]; then
        tail -40 "$log" >&2
        echo "!! $t: exit $rc, the input is in fuzz/$artifacts/$t" >&2
        status=1
    fi
done
exit $status
