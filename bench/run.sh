#!/usr/bin/env bash
# Missive and Synapse side by side, on the same machine, in one run:
# builds Missive and missive-bench in release mode, installs Synapse from PyPI
# in a venv if needed, starts each server in turn (SQLite, 127.0.0.1 only,
# fresh data), runs every missive-bench scenario against it, and writes
# BENCHMARKS.md. With BENCH_POSTGRES=1, three more configurations follow, each
# on a fresh PostgreSQL database: Missive as one process, Missive as three
# processes (one database, one data directory, the simulated clients spread
# over the three ports), and Synapse.
#
#   bench/run.sh                         # defaults: fit a 2-core machine in minutes
#   BENCH_POSTGRES=1 bench/run.sh        # also the PostgreSQL columns
#
# Environment (all optional):
#   BENCH_RUNS=5            measured runs per scenario (each figure is their median)
#   BENCH_POSTGRES=1        also Missive PG ×1, Missive PG ×3 and Synapse PG; PostgreSQL must run
#                           and accept BENCH_PG_USER without a password on BENCH_PG_HOST
#   BENCH_PG_HOST=127.0.0.1 BENCH_PG_USER=postgres   where the databases missive_bench_pg1,
#                           missive_bench_pg3 and synapse_bench_pg are dropped and created
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
PG=
case "${BENCH_POSTGRES:-}" in "" | 0 | no | false) ;; *) PG=1 ;; esac
PG_HOST=${BENCH_PG_HOST:-127.0.0.1}
PG_USER=${BENCH_PG_USER:-postgres}
# Free ports, chosen now and all different: another server on this machine
# must never receive the load. free_port runs in a subshell, so each caller
# adds the port it got to TAKEN.
TAKEN=" "
free_port() {
    local p
    for _ in $(seq 50); do
        p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        case "$TAKEN" in *" $p "*) ;; *) echo "$p"; return 0 ;; esac
    done
    return 1
}
MISSIVE_PORT=$(free_port) && TAKEN="$TAKEN$MISSIVE_PORT "
SYNAPSE_PORT=$(free_port) && TAKEN="$TAKEN$SYNAPSE_PORT "
if [ -n "$PG" ]; then
    PG1_PORT=$(free_port) && TAKEN="$TAKEN$PG1_PORT "
    PG3_PORTS=()
    for _ in 1 2 3; do p=$(free_port) && TAKEN="$TAKEN$p " && PG3_PORTS+=("$p"); done
    SYNAPSE_PG_PORT=$(free_port) && TAKEN="$TAKEN$SYNAPSE_PG_PORT "
fi
RUN_DIR="$WORK/run"
COMMAND="${BENCH_POSTGRES:+BENCH_POSTGRES=$BENCH_POSTGRES }${BENCH_WAIT_QUIET:+BENCH_WAIT_QUIET=1 }${BENCH_RUNS:+BENCH_RUNS=$BENCH_RUNS }${BENCH_ARGS:+BENCH_ARGS=\"$BENCH_ARGS\" }bench/run.sh"

say() { echo "== $*" >&2; }

# --- PostgreSQL, checked before the long build ----------------------------------
psql_admin() { psql -h "$PG_HOST" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ -n "$PG" ]; then
    command -v psql >/dev/null || { say "BENCH_POSTGRES needs psql"; exit 1; }
    PG_VER=$(psql_admin -c 'SHOW server_version') || { say "no PostgreSQL at $PG_USER@$PG_HOST"; exit 1; }
    PG_SETTINGS=$(psql_admin -F '=' -c "SELECT name, current_setting(name) FROM pg_settings
        WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'work_mem')
        ORDER BY name" | paste -sd ' ')
fi
# A new, empty database that sorts text byte-wise (what Missive and Synapse both want).
fresh_db() {
    psql_admin -c "SET client_min_messages TO warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" \
        -c "CREATE DATABASE $1 TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
}

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
if [ -n "$PG" ]; then
    if ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null; then
        say "installing psycopg2-binary from PyPI into $VENV"
        "$VENV/bin/pip" install --quiet psycopg2-binary
    fi
    PSYCOPG2_VER=$("$VENV/bin/python" -c 'import psycopg2; print(psycopg2.__version__.split()[0])')
fi

# --- fresh data ----------------------------------------------------------------
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/missive"
secret() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))'; }
SHARED_SECRET=$(secret)

# Writes a Synapse configuration in a directory and generates its signing key.
synapse_config() { # dir port database-section
    local dir=$1 port=$2 database=$3
    mkdir -p "$dir"
    # The configuration without its secrets, as BENCHMARKS.md shows it.
    cat > "$dir/public.yaml" <<EOF
server_name: "localhost"
pid_file: $dir/homeserver.pid
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
$database
log_config: $dir/log.yaml
media_store_path: $dir/media_store
signing_key_path: $dir/localhost.signing.key
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
        cat "$dir/public.yaml"
        echo "macaroon_secret_key: \"$(secret)\""
        echo "form_secret: \"$(secret)\""
        echo "registration_shared_secret: \"$SHARED_SECRET\""
    } > "$dir/homeserver.yaml"
    cat > "$dir/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
EOF
    "$VENV/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >/dev/null
}

SDIR="$RUN_DIR/synapse"
synapse_config "$SDIR" "$SYNAPSE_PORT" "  name: sqlite3
  args:
    database: $SDIR/homeserver.db"

MISSIVE_ENV=(
    MISSIVE_SERVER_NAME=localhost
    MISSIVE_LISTEN=127.0.0.1:$MISSIVE_PORT
    MISSIVE_DATA_DIR=$RUN_DIR/missive
    MISSIVE_REGISTRATION=open
    MISSIVE_RATE_LIMITS=off
    MISSIVE_LOG=warn
)

if [ -n "$PG" ]; then
    SPGDIR="$RUN_DIR/synapse-pg"
    SYNAPSE_PG_DATABASE="  name: psycopg2
  args:
    user: $PG_USER
    host: $PG_HOST
    database: synapse_bench_pg"
    synapse_config "$SPGDIR" "$SYNAPSE_PG_PORT" "$SYNAPSE_PG_DATABASE"
    mkdir -p "$RUN_DIR/missive-pg1" "$RUN_DIR/missive-pg3"
    # MISSIVE_LISTEN is given to each process when it starts.
    MISSIVE_PG1_ENV=(
        MISSIVE_SERVER_NAME=localhost
        MISSIVE_DATA_DIR=$RUN_DIR/missive-pg1
        MISSIVE_DATABASE_URL=postgres://$PG_USER@$PG_HOST/missive_bench_pg1
        MISSIVE_REGISTRATION=open
        MISSIVE_RATE_LIMITS=off
        MISSIVE_LOG=warn
    )
    MISSIVE_PG3_ENV=(
        MISSIVE_SERVER_NAME=localhost
        MISSIVE_DATA_DIR=$RUN_DIR/missive-pg3
        MISSIVE_DATABASE_URL=postgres://$PG_USER@$PG_HOST/missive_bench_pg3
        MISSIVE_REGISTRATION=open
        MISSIVE_RATE_LIMITS=off
        MISSIVE_LOG=warn
    )
fi

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
    for _ in $(seq 1200); do
        kill -0 "$2" 2>/dev/null || { say "server exited"; return 1; }
        if curl -sf "$1/_matrix/client/versions" >/dev/null; then
            # The answer must come from our process, not from another one on that port.
            ss -ltnp 2>/dev/null | grep -q "127.0.0.1:${1##*:} .*pid=$2," && return 0
            say "another process answers on ${1##*:}"; return 1
        fi
        sleep 0.1
    done
    say "server did not answer within 2 min"; return 1
}

# Starts one Missive process on a port and waits until it answers; its PID in STARTED.
start_missive() { # log port env-assignments...
    local log=$1 port=$2; shift 2
    env "$@" MISSIVE_LISTEN="127.0.0.1:$port" "$MISSIVE" serve 2> "$log" &
    STARTED=$!; PIDS+=("$STARTED")
    wait_up "http://127.0.0.1:$port" "$STARTED"
}

# What went wrong around the runs (processes that died, error lines in the
# logs), for BENCHMARKS.md. Error lines: Synapse's " - ERROR - " and
# " - CRITICAL - ", Missive's (tracing's) level field ERROR, Rust panics.
: > "$RUN_DIR/problems.txt"
check_after() { # label pids(comma-separated) logs...
    local label=$1 pids=$2 p n log; shift 2
    for p in ${pids//,/ }; do
        kill -0 "$p" 2>/dev/null || echo "$label: process $p exited during the runs" >> "$RUN_DIR/problems.txt"
    done
    for log in "$@"; do
        n=$(grep -cE ' - (ERROR|CRITICAL) - |(^|[^A-Z_])ERROR([^A-Z_]|$)|panicked' "$log" || true)
        [ "$n" = 0 ] || echo "$label: $n lines at level ERROR or above in \`${log/#$WORK/\$WORK}\`" >> "$RUN_DIR/problems.txt"
    done
}

bench() { # key label urls pids [extra flags]   (urls and pids comma-separated)
    local key=$1 label=$2 urls=$3 pids=$4; shift 4
    sleep 5 # idle after start: the first memory reading
    echo "$label: load before the run: $(cat /proc/loadavg)" >> "$RUN_DIR/load.txt"
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
    "$BENCH" run --url "$urls" --label "$label" --pid "$pids" --runs "$RUNS" --json "$RUN_DIR/$key.json" "$@" $EXTRA \
        | tee "$RUN_DIR/$key.txt"
    echo "$label: load after the run: $(cat /proc/loadavg)" >> "$RUN_DIR/load.txt"
}

stop() { # pids...
    local p
    for p in "$@"; do kill "$p" 2>/dev/null || true; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}

if [ -n "$PG" ]; then M_LABEL="Missive SQLite" S_LABEL="Synapse SQLite"; else M_LABEL=Missive S_LABEL=Synapse; fi

say "$M_LABEL on 127.0.0.1:$MISSIVE_PORT"
env "${MISSIVE_ENV[@]}" "$MISSIVE" serve 2> "$RUN_DIR/missive.log" &
MPID=$!; PIDS+=("$MPID")
wait_up "http://127.0.0.1:$MISSIVE_PORT" "$MPID"
bench missive "$M_LABEL" "http://127.0.0.1:$MISSIVE_PORT" "$MPID"
check_after "$M_LABEL" "$MPID" "$RUN_DIR/missive.log"
stop "$MPID"

say "$S_LABEL $SYNAPSE_VER on 127.0.0.1:$SYNAPSE_PORT"
"$VENV/bin/python" -m synapse.app.homeserver -c "$SDIR/homeserver.yaml" 2> "$SDIR/stderr.log" &
SPID=$!; PIDS+=("$SPID")
wait_up "http://127.0.0.1:$SYNAPSE_PORT" "$SPID"
bench synapse "$S_LABEL" "http://127.0.0.1:$SYNAPSE_PORT" "$SPID"
check_after "$S_LABEL" "$SPID" "$SDIR/homeserver.log" "$SDIR/stderr.log"
stop "$SPID"

if [ -n "$PG" ]; then
    say "Missive PG ×1 on 127.0.0.1:$PG1_PORT (PostgreSQL $PG_VER, database missive_bench_pg1)"
    fresh_db missive_bench_pg1
    start_missive "$RUN_DIR/missive-pg1.log" "$PG1_PORT" "${MISSIVE_PG1_ENV[@]}"
    P1=$STARTED
    bench missive-pg1 "Missive PG ×1" "http://127.0.0.1:$PG1_PORT" "$P1"
    check_after "Missive PG ×1" "$P1" "$RUN_DIR/missive-pg1.log"
    stop "$P1"

    say "Missive PG ×3 on 127.0.0.1:${PG3_PORTS[*]} (database missive_bench_pg3)"
    fresh_db missive_bench_pg3
    # One after the other: the first applies the schema.
    P3=() U3=() L3=()
    for i in 0 1 2; do
        start_missive "$RUN_DIR/missive-pg3-$((i + 1)).log" "${PG3_PORTS[$i]}" "${MISSIVE_PG3_ENV[@]}"
        P3+=("$STARTED") U3+=("http://127.0.0.1:${PG3_PORTS[$i]}") L3+=("$RUN_DIR/missive-pg3-$((i + 1)).log")
    done
    bench missive-pg3 "Missive PG ×3" "$(IFS=,; echo "${U3[*]}")" "$(IFS=,; echo "${P3[*]}")"
    check_after "Missive PG ×3" "$(IFS=,; echo "${P3[*]}")" "${L3[@]}"
    stop "${P3[@]}"

    say "Synapse PG $SYNAPSE_VER on 127.0.0.1:$SYNAPSE_PG_PORT (database synapse_bench_pg)"
    fresh_db synapse_bench_pg
    "$VENV/bin/python" -m synapse.app.homeserver -c "$SPGDIR/homeserver.yaml" 2> "$SPGDIR/stderr.log" &
    SPGPID=$!; PIDS+=("$SPGPID")
    wait_up "http://127.0.0.1:$SYNAPSE_PG_PORT" "$SPGPID"
    bench synapse-pg "Synapse PG" "http://127.0.0.1:$SYNAPSE_PG_PORT" "$SPGPID"
    check_after "Synapse PG" "$SPGPID" "$SPGDIR/homeserver.log" "$SPGDIR/stderr.log"
    stop "$SPGPID"
fi

# --- BENCHMARKS.md ------------------------------------------------------------------
say "writing $OUT"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)
{
    if [ -n "$PG" ]; then
        echo "# Benchmarks: Missive and Synapse side by side, on SQLite and on PostgreSQL"
        echo
        echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Same machine, same load, one"
        echo "configuration at a time, listening on 127.0.0.1: Missive and Synapse on SQLite, then on"
        echo "PostgreSQL $PG_VER (same machine, a fresh database for each configuration): Missive as one"
        echo "process (**PG ×1**), Missive as three processes sharing one database and one data directory"
        echo "(**PG ×3**, the simulated clients spread round-robin over the three ports, each client keeping"
        echo "to one), and Synapse as one process. The load generator ($BENCH) runs on the same machine"
        echo "and speaks only the Client-Server API. Each figure is the **median of $RUNS runs**, with the"
        echo "spread (min–max) in brackets. The last three columns (\"A vs B\") compare Missive with Synapse"
        echo "on the same database and say which is ahead and by how many times (for times and memory: the"
        echo "larger over the smaller)."
        echo
        echo "Memory and CPU figures are the homeserver's own process (for PG ×3, the sum of its three"
        echo "processes). PostgreSQL's processes are counted for no server: SQLite works inside the server"
        echo "process, so the SQLite columns include the database's memory and CPU and the PostgreSQL"
        echo "columns do not. On this 2-core machine PostgreSQL, the server and the load generator share"
        echo "the same two cores, so three processes cannot add CPU: PG ×3 shows the cost of running as"
        echo "several processes (cross-process wake-ups, serialised writes), not a gain in capacity."
        echo
        echo "Command: \`$COMMAND\`${BENCH_WAIT_QUIET:+ (the 1-minute load must be below 0.7 before the runs start).}"
        echo
        "$BENCH" compare "$RUN_DIR/missive.json" "$RUN_DIR/synapse.json" "$RUN_DIR/missive-pg1.json" \
            "$RUN_DIR/missive-pg3.json" "$RUN_DIR/synapse-pg.json" --ahead 1:2 --ahead 3:5 --ahead 4:5
    else
        echo "# Benchmarks: Missive and Synapse side by side"
        echo
        echo "Written by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Same machine, same load, one server"
        echo "at a time, both on SQLite, listening on 127.0.0.1; the load generator ($BENCH) runs on the"
        echo "same machine and speaks only the Client-Server API. Each figure is the **median of $RUNS runs**,"
        echo "with the spread (min–max) in brackets; the last column says which server is ahead and by how"
        echo "many times (for times and memory: the larger over the smaller)."
        echo
        echo "Command: \`$COMMAND\`${BENCH_WAIT_QUIET:+ (the 1-minute load must be below 0.7 before the runs start).}"
        echo "SQLite only: \`BENCH_POSTGRES=1 bench/run.sh\` adds Missive and Synapse on PostgreSQL."
        echo
        "$BENCH" compare "$RUN_DIR/missive.json" "$RUN_DIR/synapse.json"
    fi
    if [ -s "$RUN_DIR/problems.txt" ]; then
        echo
        echo "Problems seen by \`bench/run.sh\` (server processes and logs):"
        echo
        sed 's/^/- /' "$RUN_DIR/problems.txt"
    fi
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
    if [ -n "$PG" ]; then
        echo "- PostgreSQL: $PG_VER on the same machine, reached over TCP at $PG_HOST; settings as installed:"
        echo "  \`$PG_SETTINGS\`"
        echo "- psycopg2 (Synapse's PostgreSQL driver): psycopg2-binary $PSYCOPG2_VER from PyPI"
    fi
    echo "- missive-bench: same commit; its flags: \`--runs $RUNS $EXTRA\` (defaults otherwise: \`missive-bench run --help\`)"
    echo
    echo "## Configurations"
    echo
    if [ -n "$PG" ]; then echo "### Missive SQLite"; else echo "### Missive"; fi
    echo
    echo "Environment (every other setting is the default documented in \`missive.example.toml\`:"
    echo "SQLite in WAL mode under the data directory, presence on, no cache settings):"
    echo
    echo '```sh'
    printf '%s\n' "${MISSIVE_ENV[@]}" | sed "s|$WORK|\$WORK|g"
    echo '```'
    echo
    echo "\`MISSIVE_RATE_LIMITS=off\` turns Missive's rate limits off where the build has them, as Synapse's"
    echo "are raised below. \`MISSIVE_LOG=warn\` and Synapse's \`WARNING\` log level keep logging equal."
    if [ -n "$PG" ]; then
        echo
        echo "### Missive PG ×1 and Missive PG ×3"
        echo
        echo "The same settings with \`MISSIVE_DATABASE_URL\`, each configuration on its own fresh"
        echo "database (\`CREATE DATABASE … TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'\`)"
        echo "and its own fresh data directory. PG ×1:"
        echo
        echo '```sh'
        printf '%s\n' "${MISSIVE_PG1_ENV[@]}" "MISSIVE_LISTEN=127.0.0.1:$PG1_PORT" | sed "s|$WORK|\$WORK|g"
        echo '```'
        echo
        echo "PG ×3: three \`missive serve\` processes with this environment, differing only in"
        echo "\`MISSIVE_LISTEN\` (127.0.0.1:${PG3_PORTS[0]}, :${PG3_PORTS[1]} and :${PG3_PORTS[2]}); the first is"
        echo "started and answering before the other two start:"
        echo
        echo '```sh'
        printf '%s\n' "${MISSIVE_PG3_ENV[@]}" | sed "s|$WORK|\$WORK|g"
        echo '```'
        echo
        echo "missive-bench gets the three URLs (\`--url URL1,URL2,URL3\`) and the three PIDs"
        echo "(\`--pid P1,P2,P3\`): simulated client *i* — each registered account's first device, each"
        echo "login's new device, each worker of scenario 6 — talks to port *i* mod 3 only, its"
        echo "registration (both requests of the \`m.login.dummy\` flow) included. In scenario 2 the sender"
        echo "and the reader of a room are always on two different processes, so every delivery crosses"
        echo "processes through PostgreSQL; in scenario 4 the 200 devices and the sender are spread over"
        echo "the three; scenarios 3 and 7 measure one user on the first process, in rooms whose members"
        echo "joined and sent through all three."
    fi
    echo
    if [ -n "$PG" ]; then echo "### Synapse SQLite"; else echo "### Synapse"; fi
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
    if [ -n "$PG" ]; then
        echo
        echo "### Synapse PG"
        echo
        echo "The same \`homeserver.yaml\` (its own port, paths under \`\$WORK/run/synapse-pg\`, its own"
        echo "secrets and signing key) with this \`database\` section, on a fresh database created as for"
        echo "Missive; no \`cp_min\`/\`cp_max\`, so the connection pool is Twisted adbapi's default (3 to 5"
        echo "connections); one process, no workers:"
        echo
        echo '```yaml'
        echo "database:"
        echo "$SYNAPSE_PG_DATABASE"
        echo '```'
    fi
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
    echo "- 5 memory: RSS (VmRSS of /proc/PID/status; for several processes, the sum of theirs) 5 s after"
    echo "  the server answered its first request, and the peak over each measured run, sampled every"
    echo "  20 ms. Scenarios run in the order of the table on one server (the same process or processes"
    echo "  throughout), so later peaks include what earlier scenarios left."
    echo "- 6 registration and login: C workers register (then log in) back to back for S seconds."
    echo "- 7 sliding sync: a new connection's first simplified sliding sync (MSC4186) request for the"
    echo "  first window of the room list of scenario 3's user; skipped when the server answers 404."
    echo "- server CPU: user + system time of the server process (/proc/PID/stat; for several processes,"
    echo "  the sum) during a run."
    echo "- After each set-up (accounts, rooms, history) the load generator waits until the server's CPU"
    echo "  falls below 5 % of a core (at most 60 s), so work deferred by the set-up is not measured."
    echo "- A scenario that fails (a request answered with an error during set-up or a measured run"
    echo "  that the scenario cannot go on without) is shown as failed and the next scenario runs."
    if [ -f "$ROOT/bench/analysis.md" ]; then
        echo
        cat "$ROOT/bench/analysis.md"
    fi
} > "$OUT"
say "done: $OUT"
