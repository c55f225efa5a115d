#!/usr/bin/env bash
# Delivery across processes under CPU contention: two Missive processes on
# one fresh PostgreSQL database, the load generator's latency scenario with
# its senders and readers spread over both (a reader usually on the other
# process than its room's sender), and nice'd busy loops on every core.
# Prints each run's "not delivered" count (events not seen by their reader
# within 10 s of the last send). Not part of CI: a minute or so per run.
#
#   bench/two-processes-under-load.sh            # built binaries, 3 runs
#   RUNS=5 BIN=/path/to/other/missive bench/two-processes-under-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-/var/tmp/missive-target}"
export CARGO_TARGET_DIR="$TARGET"
cargo build --release -q -p missive -p missive-bench
BIN="${BIN:-$TARGET/release/missive}"
BENCH="$TARGET/release/missive-bench"
PG_HOST="${PG_HOST:-127.0.0.1}"
DB="missive_two_processes_$$"
psql -h "$PG_HOST" -U postgres -qc \
    "CREATE DATABASE $DB TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
DATA=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    psql -h "$PG_HOST" -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    rm -rf "$DATA"
}
trap cleanup EXIT
export MISSIVE_DATABASE_URL="postgres://postgres@$PG_HOST/$DB" MISSIVE_REGISTRATION=open \
    MISSIVE_RATE_LIMITS=off MISSIVE_DATA_DIR="$DATA" MISSIVE_LOG=warn
MISSIVE_LISTEN=127.0.0.1:18101 "$BIN" >"$DATA/a.log" 2>&1 &
a=$!
pids+=("$a")
sleep 2
MISSIVE_LISTEN=127.0.0.1:18102 "$BIN" >"$DATA/b.log" 2>&1 &
b=$!
pids+=("$b")
for _ in $(seq 30); do
    curl -sf http://127.0.0.1:18102/_matrix/client/versions >/dev/null && break
    sleep 1
done
for _ in $(seq "$(nproc)"); do
    nice -n 10 sh -c 'while :; do :; done' &
    pids+=("$!")
done
"$BENCH" run --url http://127.0.0.1:18101,http://127.0.0.1:18102 --pid "$a,$b" --scenarios latency \
    --latency-rooms 20 --latency-rate 100 --latency-secs 15 --runs "${RUNS:-3}" 2>&1 |
    grep -E "latency\] run|not delivered|delivery latency"
