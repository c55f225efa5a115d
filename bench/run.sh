#!/usr/bin/env bash
# Missive and Synapse side by side, on the same machine, in one run:
# builds Missive and missive-bench in release mode, installs Synapse from PyPI
# in a venv if needed, starts each server in turn (SQLite, 127.0.0.1 only,
# fresh data), runs every missive-bench scenario against it, and writes
# BENCHMARKS.md.
#
#   bench/run.sh                         # defaults: fit a 2-core machine in minutes
#
# Environment (all optional):
#   BENCH_RUNS=5            measured runs per scenario (each figure is their median)
#   BENCH_ARGS="..."        extra missive-bench flags, e.g. "--td-devices 300 --sync-rooms 50"
#   BENCH_WAIT_QUIET=1      first wait (up to 40 min, polling every 60 s) for a 1-minute load below 0.7
#   BENCH_WORK=/var/tmp/missive-bench   venv, data directories, logs (never in the repository)
#   BENCH_OUT=BENCHMARKS.md where the report goes (relative to the repository root)
#   SYNAPSE_VERSION=1.2.3   pin the Synapse release installed in a new venv
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_WORK:-/var/tmp/missive-bench}
RUNS=${BENCH_RUNS:-5}
EXTRA=${BENCH_ARGS:-}
OUT=${BENCH_OUT:-BENCHMARKS.md}
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/missive-target}
# Free ports, chosen now: another server on this machine must never receive the load.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MISSIVE_PORT=$(free_port)
SYNAPSE_PORT=$(free_port)
while [ "$SYNAPSE_PORT" = "$MISSIVE_PORT" ]; do SYNAPSE_PORT=$(free_port); done
RUN_DIR="$WORK/run"
COMMAND="${BENCH_WAIT_QUIET:+BENCH_WAIT_QUIET=1 }${BENCH_RUNS:+BENCH_RUNS=$BENCH_RUNS }${BENCH_ARGS:+BENCH_ARGS=\"$BENCH_ARGS\" }bench/run.sh"

say() { echo "== $*" >&2; }

# --- build -------------------------------------------------------------------
say "building missive and missive-bench (release)"
(cd "$ROOT" && cargo build --release -p missive -p missive-bench)
MISSIVE="$CARGO_TARGET_DIR/release/missive"
BENCH="$CARGO_TARGET_DIR/release/missive-bench"

# --- Synapse in a venv ---------------------------------------------------------
VENV="$WORK/venv"
if ! "$VENV/bin/python" -c 'import synapse' 2>/dev/null; then
    say "installing Synapse from PyPI into $VENV"
    mkdir -p "$WORK"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}"
fi
SYNAPSE_VER=$("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')

# --- fresh data ----------------------------------------------------------------
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/missive" "$RUN_DIR/synapse"
SDIR="$RUN_DIR/synapse"
secret() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))'; }
SHARED_SECRET=$(secret)
# The Synapse configuration, without its secrets, as BENCHMARKS.md shows it.
cat > "$SDIR/public.yaml" <<EOF
server_name: "localhost"
pid_file: $SDIR/homeserver.pid
listeners:
  - port: $SYNAPSE_PORT
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: $SDIR/homeserver.db
log_config: $SDIR/log.yaml
media_store_path: $SDIR/media_store
signing_key_path: $SDIR/localhost.signing.key
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
# Accounts: open registration with the m.login.dummy stage, as for Missive.
enable_registration: true
enable_registration_without_verification: true
# Password hashing: bcrypt with Synapse's default cost.
bcrypt_rounds: 12
# Caches: Synapse's defaults, written out.
event_cache_size: 10K
caches:
  global_factor: 0.5
  sync_response_cache_duration: 2m
presence:
  enabled: true
# Rate limits raised far above the load so that nothing is throttled
# (missive-bench also counts any 429 answer and reports it).
rc_message: { per_second: 100000, burst_count: 100000 }
rc_registration: { per_second: 100000, burst_count: 100000 }
rc_registration_token_validity: { per_second: 100000, burst_count: 100000 }
rc_login:
  address: { per_second: 100000, burst_count: 100000 }
  account: { per_second: 100000, burst_count: 100000 }
  failed_attempts: { per_second: 100000, burst_count: 100000 }
rc_joins:
  local: { per_second: 100000, burst_count: 100000 }
  remote: { per_second: 100000, burst_count: 100000 }
rc_joins_per_room: { per_second: 100000, burst_count: 100000 }
rc_invites:
  per_room: { per_second: 100000, burst_count: 100000 }
  per_user: { per_second: 100000, burst_count: 100000 }
  per_issuer: { per_second: 100000, burst_count: 100000 }
rc_3pid_validation: { per_second: 100000, burst_count: 100000 }
rc_key_requests: { per_second: 100000, burst_count: 100000 }
rc_room_creation: { per_second: 100000, burst_count: 100000 }
rc_presence:
  per_user: { per_second: 100000, burst_count: 100000 }
rc_delayed_event_mgmt: { per_second: 100000, burst_count: 100000 }
rc_media_create: { per_second: 100000, burst_count: 100000 }
rc_profile: { per_second: 100000, burst_count: 100000 }
rc_user_directory: { per_second: 100000, burst_count: 100000 }
EOF
{
    cat "$SDIR/public.yaml"
    echo "macaroon_secret_key: \"$(secret)\""
    echo "form_secret: \"$(secret)\""
    echo "registration_shared_secret: \"$SHARED_SECRET\""
} > "$SDIR/homeserver.yaml"
cat > "$SDIR/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $SDIR/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF
"$VENV/bin/python" -m synapse.app.homeserver -c "$SDIR/homeserver.yaml" --generate-keys >/dev/null

MISSIVE_ENV=(
    MISSIVE_SERVER_NAME=localhost
    MISSIVE_LISTEN=127.0.0.1:$MISSIVE_PORT
    MISSIVE_DATA_DIR=$RUN_DIR/missive
    MISSIVE_REGISTRATION=open
    MISSIVE_RATE_LIMITS=off
    MISSIVE_LOG=warn
)

# --- wait for a quiet machine ---------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
if [ -n "${BENCH_WAIT_QUIET:-}" ]; then
    for _ in $(seq 40); do
        awk -v l="$(load1)" 'BEGIN { exit !(l < 0.7) }' && break
        say "waiting for a quiet machine: load $(cat /proc/loadavg)"
        sleep 60
    done
fi

# --- run one server ---------------------------------------------------------------
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_up() { # url pid
    for _ in $(seq 600); do
        kill -0 "$2" 2>/dev/null || { say "server exited"; return 1; }
        if curl -sf "$1/_matrix/client/versions" >/dev/null; then
            # The answer must come from our process, not from another one on that port.
            ss -ltnp 2>/dev/null | grep -q "127.0.0.1:${1##*:} .*pid=$2," && return 0
            say "another process answers on ${1##*:}"; return 1
        fi
        sleep 0.1
    done
    say "server did not answer within 60 s"; return 1
}

bench() { # label url pid json [extra flags]
    local label=$1 url=$2 pid=$3 json=$4; shift 4
    sleep 5 # idle after start: the first memory reading
    echo "$label: load before the run: $(cat /proc/loadavg)" >> "$RUN_DIR/load.txt"
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
    "$BENCH" run --url "$url" --label "$label" --pid "$pid" --runs "$RUNS" --json "$json" "$@" $EXTRA \
        | tee "$RUN_DIR/$label.txt"
    echo "$label: load after the run: $(cat /proc/loadavg)" >> "$RUN_DIR/load.txt"
}

stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

say "Missive on 127.0.0.1:$MISSIVE_PORT"
env "${MISSIVE_ENV[@]}" "$MISSIVE" serve 2> "$RUN_DIR/missive.log" &
MPID=$!; PIDS+=("$MPID")
wait_up "http://127.0.0.1:$MISSIVE_PORT" "$MPID"
bench Missive "http://127.0.0.1:$MISSIVE_PORT" "$MPID" "$RUN_DIR/missive.json"
stop "$MPID"

say "Synapse $SYNAPSE_VER on 127.0.0.1:$SYNAPSE_PORT"
"$VENV/bin/python" -m synapse.app.homeserver -c "$SDIR/homeserver.yaml" 2> "$SDIR/stderr.log" &
SPID=$!; PIDS+=("$SPID")
wait_up "http://127.0.0.1:$SYNAPSE_PORT" "$SPID"
bench Synapse "http://127.0.0.1:$SYNAPSE_PORT" "$SPID" "$RUN_DIR/synapse.json"
stop "$SPID"

# --- BENCHMARKS.md ------------------------------------------------------------------
say "writing $OUT"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)
{
    echo "# Benchmarks: Missive and Synapse side by side"
    echo
    echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Same machine, same load, one server"
    echo "at a time, both on SQLite, listening on 127.0.0.1; the load generator ($BENCH) runs on the"
    echo "same machine and speaks only the Client-Server API. Each figure is the **median of $RUNS runs**,"
    echo "with the spread (min–max) in brackets; the last column says which server is ahead and by how"
    echo "many times (for times and memory: the larger over the smaller)."
    echo
    echo "Command: \`$COMMAND\`${BENCH_WAIT_QUIET:+ (the 1-minute load must be below 0.7 before the runs start).}"
    echo "SQLite only: PostgreSQL columns come with the PostgreSQL backend (issue 7)."
    echo
    "$BENCH" compare "$RUN_DIR/missive.json" "$RUN_DIR/synapse.json"
    echo
    echo "## Password hashing (scenario 6)"
    echo
    echo "- Missive: Argon2id with the \`argon2\` crate's defaults: m = 19456 KiB, t = 2, p = 1."
    echo "- Synapse: bcrypt, \`bcrypt_rounds: 12\` (its default)."
    echo
    echo "Registration and login figures are mostly the cost of one hash each, so they compare the"
    echo "two hash settings more than the two servers."
    echo
    echo "## Machine"
    echo
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
    echo "- memory: $(free -g | awk '/^Mem:/ { print $2 }') GiB; kernel $(uname -r)"
    echo "- load average (1, 5, 15 min) around each server's run:"
    sed 's/^/  - /' "$RUN_DIR/load.txt"
    echo
    echo "## Versions"
    echo
    echo "- Missive: commit $REV$DIRTY, built with \`cargo build --release\` ($(rustc --version))"
    echo "- Synapse: $SYNAPSE_VER from PyPI, $("$VENV/bin/python" --version), single process"
    echo "- missive-bench: same commit; its flags: \`--runs $RUNS $EXTRA\` (defaults otherwise: \`missive-bench run --help\`)"
    echo
    echo "## Configurations"
    echo
    echo "### Missive"
    echo
    echo "Environment (every other setting is the default documented in \`missive.example.toml\`:"
    echo "SQLite in WAL mode under the data directory, presence on, no cache settings):"
    echo
    echo '```sh'
    printf '%s\n' "${MISSIVE_ENV[@]}"
    echo '```'
    echo
    echo "\`MISSIVE_RATE_LIMITS=off\` turns Missive's rate limits off where the build has them, as Synapse's"
    echo "are raised below. \`MISSIVE_LOG=warn\` and Synapse's \`WARNING\` log level keep logging equal."
    echo
    echo "### Synapse"
    echo
    echo "\`homeserver.yaml\` (the secrets — macaroon, form and registration shared secret — left out;"
    echo "logging to a file at level WARNING; no federation listener; started as"
    echo "\`python -m synapse.app.homeserver -c homeserver.yaml\`):"
    echo
    echo '```yaml'
    sed "s|$WORK|\$WORK|g" "$SDIR/public.yaml"
    echo '```'
    echo
    echo "Every rate limit is raised to 100,000/s so that the load is not throttled: the figures measure"
    echo "the server, not its default protection. missive-bench counts every 429 answer; any would be"
    echo "listed under the table."
    echo
    echo "## Method"
    echo
    echo "- 1 send: N users spread over M rooms, one request in flight each, for T seconds; acknowledged"
    echo "  events per second over the run's wall time."
    echo "- 2 latency: senders at a fixed total rate (open loop), one long-polling reader per room with a"
    echo "  filter on that room; time from the sender's 200 to the reader's /sync returning the event."
    echo "- 3 initial sync: one user in R rooms of K members (the same K−1 accounts in every room) with H"
    echo "  messages each; initial /sync (timeout 0) with \`lazy_load_members\` and without it. Each run's"
    echo "  filter excludes a different unused event type, so Synapse's sync response cache cannot answer."
    echo "- 4 to-device: D devices (password logins, D/P users of P devices), each long-polling /sync with"
    echo "  a filter that leaves rooms out; one sendToDevice addresses them all; timed from the request"
    echo "  until the last device's sync returned it."
    echo "- 5 memory: RSS (VmRSS of /proc/PID/status) 5 s after the server answered its first request,"
    echo "  and the peak over each measured run, sampled every 20 ms. Scenarios run in the order of the"
    echo "  table on one server process, so later peaks include what earlier scenarios left."
    echo "- 6 registration and login: C workers register (then log in) back to back for S seconds."
    echo "- 7 sliding sync: a new connection's first simplified sliding sync (MSC4186) request for the"
    echo "  first window of the room list of scenario 3's user; skipped when the server answers 404."
    echo "- server CPU: user + system time of the server process (/proc/PID/stat) during a run."
    echo "- After each set-up (accounts, rooms, history) the load generator waits until the server's CPU"
    echo "  falls below 5 % of a core (at most 60 s), so work deferred by the set-up is not measured."
    if [ -f "$ROOT/bench/analysis.md" ]; then
        echo
        cat "$ROOT/bench/analysis.md"
    fi
} > "$OUT"
say "done: $OUT"
