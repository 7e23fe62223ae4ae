#!/usr/bin/env bash
# pgbench_compare.sh: shardpool vs PgBouncer vs direct Postgres, all on this machine, in one run.
#
# Builds shardpool (release), starts a throwaway Postgres, PgBouncer and shardpool on free loopback ports, runs
# interleaved pgbench workloads, measures pooler CPU per transaction, RSS per idle client and single-client added
# latency, prints Markdown tables, and removes everything it started on exit (including on failure or Ctrl-C).
# How to run and how to read the output: docs/benchmarks.md.
#
# Knobs (environment):
#   DURATION=10          seconds per pgbench run
#   REPEATS=3            interleaved repeats per cell (medians are reported)
#   CLIENTS="10 100 1000"
#   WORKLOADS="select-simple select-extended select-prepared tpcb-simple"
#   IDLE_CLIENTS=10000   idle logins for the memory test (0 skips it)
#   SCALE=10             pgbench -i scale
#   THREADS=2            pgbench -j (capped at the client count)
#   SHARDPOOL_WORKERS=0  shardpool [general] workers (0 = one per core)
#   SHARDPOOL_RUNTIME=   shardpool [general] runtime: thread_per_core, or unset for the default (work_stealing;
#                        the line is then left out, so binaries older than the setting run too)
#   SHARDPOOL_BIN=path   use this binary instead of building
#   PGBOUNCER_BIN=path   the PgBouncer to compare against (default: `pgbouncer` on PATH, else /usr/sbin/pgbouncer,
#                        installed from Debian if missing); e.g. the 1.24 that ../shared/tools/build-pgbouncer-1.24.sh
#                        builds. Also settable as `--pgbouncer PATH`.
#   OUT=dir              also save report.md, the raw TSVs, configs and logs there
#   KEEP_TMP=1           keep the temp dir (logs, data dir) for debugging
#
# Flags: --pgbouncer PATH (same as PGBOUNCER_BIN), --help.
set -euo pipefail

PGBOUNCER_BIN=${PGBOUNCER_BIN:-}
while (( $# > 0 )); do
    case $1 in
        --pgbouncer) PGBOUNCER_BIN=${2:?--pgbouncer needs a path}; shift 2 ;;
        --pgbouncer=*) PGBOUNCER_BIN=${1#--pgbouncer=}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CLIENTS=${CLIENTS:-"10 100 1000"}
WORKLOADS=${WORKLOADS:-"select-simple select-extended select-prepared tpcb-simple"}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}
SHARDPOOL_WORKERS=${SHARDPOOL_WORKERS:-0}
SHARDPOOL_RUNTIME=${SHARDPOOL_RUNTIME:-}
SHARDPOOL_BIN=${SHARDPOOL_BIN:-}
OUT=${OUT:-}
KEEP_TMP=${KEEP_TMP:-0}

# Postgres' own limits; direct runs above (max_connections - reserved) would only measure a connection error.
PG_MAX_CONNECTIONS=300
PG_RESERVED=3
POOL_SIZE=20

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SUPPORT=$HERE/support

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
# Cleanup: every process this script starts is recorded here and stopped by pid; nothing is killed by name, so
# other Postgres/PgBouncer instances on a shared machine are never touched.
TMP=""
PG_STARTED=0
SP_PID=""
PGB_PID=""
IDLE_PID=""
AS_PG=()

stop_pid() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$IDLE_PID"
    stop_pid "$SP_PID"
    stop_pid "$PGB_PID"
    if [[ $PG_STARTED == 1 ]]; then
        "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "kept $TMP"
        else
            if [[ $rc != 0 && $rc != 130 && $rc != 143 ]]; then
                # After a failure (not an interrupt) the newest logs usually say why; show them before they go.
                # shellcheck disable=SC2012 # names are ours, no odd characters
                for f in $(ls -t "$TMP"/logs/*.log 2>/dev/null | head -n 4); do
                    printf '\n--- tail of %s ---\n' "$(basename "$f")" >&2
                    tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
                done
                log "(KEEP_TMP=1 keeps all logs and the data directory)"
            fi
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# Prerequisites

[[ $EUID == 0 ]] || log "not root: Postgres and PgBouncer run as $(id -un); PgBouncer must already be installed"

PG_BINDIR=""
if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    PG_BINDIR=$(pg_config --bindir)
else
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        [[ -x $d/initdb ]] && { PG_BINDIR=$d; break; }
    done
fi
[[ -n $PG_BINDIR ]] || die "no Postgres server binaries (initdb) found; on Debian: apt-get install postgresql-15"
[[ -x $PG_BINDIR/pgbench ]] || die "no pgbench in $PG_BINDIR"
PGBENCH=$PG_BINDIR/pgbench
PSQL=$PG_BINDIR/psql

if [[ -n $PGBOUNCER_BIN ]]; then
    [[ -x $PGBOUNCER_BIN ]] || die "PGBOUNCER_BIN=$PGBOUNCER_BIN is not an executable file"
    PGBOUNCER=$(realpath "$PGBOUNCER_BIN")
else
    if ! command -v pgbouncer >/dev/null && [[ ! -x /usr/sbin/pgbouncer ]]; then
        [[ $EUID == 0 ]] || die "pgbouncer is not installed (apt-get install pgbouncer, or set PGBOUNCER_BIN)"
        log "installing pgbouncer from Debian"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    fi
    PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
fi
PGBOUNCER_VERSION=$("$PGBOUNCER" --version 2>/dev/null | head -n1) || die "$PGBOUNCER --version failed"
log "comparing against $PGBOUNCER_VERSION ($PGBOUNCER)"
command -v python3 >/dev/null || die "python3 is needed for the idle-client test and the report"

if [[ $EUID == 0 ]]; then
    # Postgres and PgBouncer refuse to run as root. setpriv execs in place (unlike su/runuser, which fork), so
    # "$!" after a backgrounded "${AS_PG[@]}" cmd is the server's own pid, which the CPU and RSS readings need.
    id postgres >/dev/null 2>&1 || die "no 'postgres' user (it comes with Debian's postgresql-common)"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# 1,000 pgbench clients plus 10,000 idle clients need more descriptors than the usual 1024. Take 65536 if
# allowed, else whatever the hard limit is.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited ]] && (( NOFILE < IDLE_CLIENTS + 1000 )); then
    die "open-file limit $NOFILE is too low for IDLE_CLIENTS=$IDLE_CLIENTS (lower IDLE_CLIENTS or raise the hard limit)"
fi

CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------------------------
# Build

if [[ -z $SHARDPOOL_BIN ]]; then
    log "building shardpool (release)"
    (cd "$REPO" && cargo build --release --bin shardpool --quiet) || die "cargo build failed"
    SHARDPOOL_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/shardpool
fi
[[ -x $SHARDPOOL_BIN ]] || die "no shardpool binary at $SHARDPOOL_BIN"

# ---------------------------------------------------------------------------------------------------------------
# Workspace and ports

TMP=$(mktemp -d /tmp/shardpool-bench.XXXXXX)
mkdir -p "$TMP/logs" "$TMP/sock" "$TMP/results"
# Run a private copy: a target dir shared with other checkouts can have its binary replaced by their builds.
cp "$SHARDPOOL_BIN" "$TMP/shardpool"
SHARDPOOL_BIN=$TMP/shardpool
[[ $EUID == 0 ]] && chown -R postgres:postgres "$TMP"
chmod 755 "$TMP"

# Ask the kernel for three distinct free ports (all three sockets are open at once, so no duplicates). Another
# process could take one before we bind it; that is unlikely enough on loopback and would fail loudly.
read -r PG_PORT PGB_PORT SP_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# ---------------------------------------------------------------------------------------------------------------
# Postgres

log "initdb + starting Postgres on 127.0.0.1:$PG_PORT"
"${AS_PG[@]}" "$PG_BINDIR/initdb" -D "$TMP/pgdata" -U postgres -A trust -E UTF8 --no-sync \
    >"$TMP/logs/initdb.log" 2>&1 || die "initdb failed"
cat >>"$TMP/pgdata/postgresql.conf" <<EOF
# --- pgbench_compare.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
# A private socket directory keeps clear of any system cluster's /var/run/postgresql.
unix_socket_directories = '$TMP/sock'
max_connections = $PG_MAX_CONNECTIONS
superuser_reserved_connections = $PG_RESERVED
shared_buffers = 256MB
# Durability off: this measures poolers, not the disk. Identical for all three targets.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
cat >"$TMP/pgdata/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 trust
EOF
"${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -l "$TMP/logs/postgres.log" -w -t 60 start >/dev/null \
    || die "Postgres did not start"
PG_STARTED=1

pg_super() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
pg_super -d postgres -c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$TMP/logs/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed"

# ---------------------------------------------------------------------------------------------------------------
# Poolers

cat >"$TMP/userlist.txt" <<EOF
"bench" ""
EOF
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
; TCP only, like the other two targets.
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 12000
ignore_startup_parameters = extra_float_digits
; shardpool does not log each login either; per-connection log lines would tilt the 1,000-client and idle tests.
log_connections = 0
log_disconnections = 0
EOF
cat >"$TMP/shardpool.toml" <<EOF
[general]
listen = "127.0.0.1:$SP_PORT"
workers = $SHARDPOOL_WORKERS
${SHARDPOOL_RUNTIME:+runtime = \"$SHARDPOOL_RUNTIME\"}
max_client_conn = 12000
pool_mode = "transaction"
pool_size = $POOL_SIZE
ignore_startup_parameters = ["extra_float_digits"]

[[users]]
name = "bench"
auth = "trust"

[databases.bench]
host = "127.0.0.1"
port = $PG_PORT
EOF
[[ $EUID == 0 ]] && chown postgres:postgres "$TMP"/userlist.txt "$TMP"/pgbouncer.ini

# Wait until a real query goes through, not just until the port accepts: that also proves auth and routing work.
wait_ready() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
        if "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U bench -d bench -c "SELECT 1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "$name did not answer on port $port within 30 s"
}

start_pgbouncer() {
    "${AS_PG[@]}" "$PGBOUNCER" "$TMP/pgbouncer.ini" >>"$TMP/logs/pgbouncer.log" 2>&1 &
    PGB_PID=$!
    wait_ready PgBouncer "$PGB_PORT" "$PGB_PID"
}
start_shardpool() {
    "$SHARDPOOL_BIN" --config "$TMP/shardpool.toml" >>"$TMP/logs/shardpool.log" 2>&1 &
    SP_PID=$!
    wait_ready shardpool "$SP_PORT" "$SP_PID"
}
log "starting PgBouncer on :$PGB_PORT and shardpool on :$SP_PORT (workers = $SHARDPOOL_WORKERS, runtime = ${SHARDPOOL_RUNTIME:-work_stealing})"
start_pgbouncer
start_shardpool

port_of() { case $1 in direct) echo "$PG_PORT" ;; pgbouncer) echo "$PGB_PORT" ;; shardpool) echo "$SP_PORT" ;; esac; }
pid_of() { case $1 in direct) echo "" ;; pgbouncer) echo "$PGB_PID" ;; shardpool) echo "$SP_PID" ;; esac; }

# utime+stime of a whole process (all threads), in clock ticks. The comm field may hold spaces, so cut after ")".
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

check_alive() {
    local t
    for t in pgbouncer shardpool; do
        kill -0 "$(pid_of $t)" 2>/dev/null || die "$t died (see its log)"
    done
}

# ---------------------------------------------------------------------------------------------------------------
# Runtime estimate, printed up front so nobody waits blindly.

n_wl=$(wc -w <<<"$WORKLOADS")
n_runs=0
for c in $CLIENTS; do
    if (( c > PG_MAX_CONNECTIONS - PG_RESERVED )); then n_runs=$((n_runs + 2)); else n_runs=$((n_runs + 3)); fi
done
est=$(( (n_wl * n_runs * REPEATS + 3 * REPEATS) * (DURATION + 1) ))
log "about $((est / 60)) min of pgbench runs ahead (+ connection setup and the idle-client test)"

# ---------------------------------------------------------------------------------------------------------------
# One pgbench run: appends a row to a results TSV.
#   run_pgbench FILE TARGET CLIENTS THREADS REPEAT KEY pgbench-args...
# A run "fails" on a non-zero exit, on any failed transaction, or when pgbench printed no TPS: PgBouncer 1.18
# with -M prepared in transaction mode aborts clients, and that must read as "fails", never as a low number.
RUN_NO=0
run_pgbench() {
    local file=$1 target=$2 clients=$3 threads=$4 rep=$5 key=$6
    shift 6
    local port pid logf rc=0 c0="" c1="" cpu_us="" rss="" tps lat xacts failed note status
    port=$(port_of "$target")
    pid=$(pid_of "$target")
    RUN_NO=$((RUN_NO + 1))
    logf="$TMP/logs/run-$(printf %03d $RUN_NO)-$key-$target-c$clients-r$rep.log"
    [[ -n $pid ]] && c0=$(cpu_ticks "$pid")
    "$PGBENCH" -h 127.0.0.1 -p "$port" -U bench -n -c "$clients" -j "$threads" -T "$DURATION" "$@" bench \
        >"$logf" 2>&1 || rc=$?
    if [[ -n $pid ]]; then
        c1=$(cpu_ticks "$pid")
        cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK ))
        # RSS after every run shows whether a pooler's memory plateaus or keeps growing under load.
        rss=$(rss_kib "$pid")
    fi
    tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$logf" | head -n1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$logf" | head -n1)
    xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$logf" | head -n1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$logf" | head -n1)
    note=""
    if [[ $rc == 0 && -n $tps && ${failed:-0} == 0 ]]; then
        status=ok
    else
        status=fail
        # First error line, tabs/newlines flattened so the TSV stays one row.
        note=$(grep -m1 -E 'error|ERROR|FATAL|aborted' "$logf" | tr '\t' ' ' | cut -c1-200 || true)
        note="exit $rc, failed xacts ${failed:-?}: ${note:-see log}"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$clients" "$target" "$rep" "$status" \
        "${tps:-}" "${lat:-}" "${xacts:-}" "${failed:-}" "$cpu_us" "$rss" "$note" >>"$file"
    log "  $key c=$clients $target #$rep: $status tps=${tps:--} lat=${lat:--}ms${cpu_us:+ cpu=${cpu_us}us rss=${rss}KiB}"
    check_alive
}

# ---------------------------------------------------------------------------------------------------------------
# Test 1: memory per idle authenticated client. Runs first, on fresh pooler processes, so "RSS before" is not
# inflated by buffers the 1,000-client runs left behind in the allocator.

IDLE_TSV=$TMP/results/idle.tsv
printf 'target\tclients\tstatus\trss_before_kib\trss_idle_kib\trss_after_kib\tnote\n' >"$IDLE_TSV"
if (( IDLE_CLIENTS > 0 )); then
    for target in pgbouncer shardpool; do
        pid=$(pid_of $target)
        port=$(port_of $target)
        log "idle test: $IDLE_CLIENTS clients -> $target"
        sleep 1
        before=$(rss_kib "$pid")
        out=$TMP/logs/idle-$target.log
        python3 "$SUPPORT/idle_clients.py" --port "$port" --clients "$IDLE_CLIENTS" >"$out" 2>&1 &
        IDLE_PID=$!
        for _ in $(seq 600); do
            grep -qE '^(READY|FAILED)' "$out" && break
            kill -0 "$IDLE_PID" 2>/dev/null || break
            sleep 0.5
        done
        if grep -q '^READY' "$out"; then
            # Let the pooler settle (deferred frees, buffer shrinking) before reading.
            sleep 3
            idle=$(rss_kib "$pid")
            # The pooler must still serve while holding the idle clients.
            "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U bench -d bench -c "SELECT 1" >/dev/null \
                || die "$target stopped answering with $IDLE_CLIENTS idle clients"
            stop_pid "$IDLE_PID"
            IDLE_PID=""
            sleep 3
            after=$(rss_kib "$pid")
            printf '%s\t%s\tok\t%s\t%s\t%s\t\n' "$target" "$IDLE_CLIENTS" "$before" "$idle" "$after" >>"$IDLE_TSV"
            log "  $target: RSS ${before} -> ${idle} KiB with clients, ${after} KiB after"
        else
            note=$(grep -m1 . "$out" | tr '\t' ' ' | cut -c1-200 || true)
            stop_pid "$IDLE_PID"
            IDLE_PID=""
            printf '%s\t%s\tfail\t\t\t\t%s\n' "$target" "$IDLE_CLIENTS" "${note:-no READY within 300 s}" >>"$IDLE_TSV"
            log "  $target: idle test failed: ${note:-timeout}"
        fi
        check_alive
    done
fi

# ---------------------------------------------------------------------------------------------------------------
# Test 2: one client, SELECT 1, prepared: the latency a pooler adds to a round trip.

SEL1_TSV=$TMP/results/select1.tsv
MATRIX_HEADER=$'workload\tclients\ttarget\trepeat\tstatus\ttps\tlat_ms\txacts\tfailed\tcpu_us\trss_kib\tnote'
echo "$MATRIX_HEADER" >"$SEL1_TSV"
echo 'SELECT 1;' >"$TMP/select1.sql"
log "single-client SELECT 1 latency"
for rep in $(seq "$REPEATS"); do
    for target in direct pgbouncer shardpool; do
        run_pgbench "$SEL1_TSV" $target 1 1 "$rep" select1 -M prepared -f "$TMP/select1.sql"
    done
done

# ---------------------------------------------------------------------------------------------------------------
# Test 3: the throughput matrix. Targets are interleaved within each repeat so that background load on a shared
# machine (and Postgres' own drift, e.g. TPC-B's growing history table) spreads over all three alike.

MATRIX_TSV=$TMP/results/matrix.tsv
echo "$MATRIX_HEADER" >"$MATRIX_TSV"
workload_args() {
    case $1 in
        select-simple) echo "-S -M simple" ;;
        select-extended) echo "-S -M extended" ;;
        select-prepared) echo "-S -M prepared" ;;
        tpcb-simple) echo "-M simple" ;;
        *) die "unknown workload $1" ;;
    esac
}
for wl in $WORKLOADS; do
    read -r -a wargs <<<"$(workload_args "$wl")"
    for c in $CLIENTS; do
        j=$(( THREADS < c ? THREADS : c ))
        log "$wl, $c clients"
        for rep in $(seq "$REPEATS"); do
            for target in direct pgbouncer shardpool; do
                if [[ $target == direct ]] && (( c > PG_MAX_CONNECTIONS - PG_RESERVED )); then
                    printf '%s\t%s\tdirect\t%s\tna\t\t\t\t\t\t\tmax_connections\n' "$wl" "$c" "$rep" >>"$MATRIX_TSV"
                    continue
                fi
                run_pgbench "$MATRIX_TSV" $target "$c" "$j" "$rep" "$wl" "${wargs[@]}"
            done
        done
    done
done

# ---------------------------------------------------------------------------------------------------------------
# Report

sp_rss_end=$(rss_kib "$SP_PID")
pgb_rss_end=$(rss_kib "$PGB_PID")
REPORT=$TMP/report.md
{
    echo "## pgbench comparison: shardpool vs PgBouncer vs direct Postgres"
    echo
    echo "### Machine and versions"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| nproc | $(nproc) |"
    echo "| CPU | $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |"
    echo "| memory | $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) |"
    echo "| kernel | $(uname -r) |"
    # shellcheck source=/dev/null
    echo "| OS | $(. /etc/os-release && echo "$PRETTY_NAME") |"
    echo "| Postgres | $("$PG_BINDIR/postgres" --version) |"
    echo "| PgBouncer | $PGBOUNCER_VERSION (\`$PGBOUNCER\`) |"
    echo "| shardpool | $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (dirty)'), workers = $SHARDPOOL_WORKERS, runtime = ${SHARDPOOL_RUNTIME:-work_stealing} |"
    echo "| load average at end | $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo
    echo "Postgres runs with \`fsync=off\`, \`synchronous_commit=off\`, \`full_page_writes=off\`" \
         "(durability is irrelevant to a pooler comparison and identical for all targets)," \
         "\`max_connections=$PG_MAX_CONNECTIONS\`, \`shared_buffers=256MB\`. pgbench, Postgres and the poolers share" \
         "the same $(nproc) cores."
    echo
    python3 "$SUPPORT/report.py" "$TMP/results"
    echo "Pooler RSS at the end of the run: shardpool $((sp_rss_end / 1024)) MiB, PgBouncer $((pgb_rss_end / 1024)) MiB."
    echo
    echo "### Commands"
    echo
    echo '```sh'
    echo "PGBOUNCER_BIN=$PGBOUNCER DURATION=$DURATION REPEATS=$REPEATS CLIENTS=\"$CLIENTS\" WORKLOADS=\"$WORKLOADS\" IDLE_CLIENTS=$IDLE_CLIENTS SHARDPOOL_WORKERS=$SHARDPOOL_WORKERS ${SHARDPOOL_RUNTIME:+SHARDPOOL_RUNTIME=$SHARDPOOL_RUNTIME }benches/pgbench_compare.sh"
    echo "# per run (PORT = direct $PG_PORT, PgBouncer $PGB_PORT, shardpool $SP_PORT; j = min($THREADS, clients)):"
    echo "pgbench -i -q -s $SCALE -h 127.0.0.1 -p $PG_PORT -U bench bench"
    for wl in $WORKLOADS; do
        echo "pgbench -h 127.0.0.1 -p PORT -U bench -n -c N -j j -T $DURATION $(workload_args "$wl") bench"
    done
    echo "pgbench -h 127.0.0.1 -p PORT -U bench -n -c 1 -j 1 -T $DURATION -M prepared -f select1.sql bench   # select1.sql: SELECT 1;"
    echo "python3 benches/support/idle_clients.py --port PORT --clients $IDLE_CLIENTS"
    echo '```'
    echo
    echo "<details><summary>pgbouncer.ini</summary>"
    echo
    echo '```ini'
    cat "$TMP/pgbouncer.ini"
    echo '```'
    echo "</details>"
    echo
    echo "<details><summary>shardpool.toml</summary>"
    echo
    echo '```toml'
    cat "$TMP/shardpool.toml"
    echo '```'
    echo "</details>"
} >"$REPORT"

# Anything the poolers logged at warn/error level during the run is worth a look (e.g. a pool error under load).
# tracing writes ANSI colour codes even to a file, hence the sed before matching the level.
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g' "$@"; }
sp_warn=$(strip_ansi "$TMP/logs/shardpool.log" | grep -cE ' (WARN|ERROR) ' || true)
if (( sp_warn > 0 )); then
    {
        echo
        echo "shardpool logged $sp_warn WARN/ERROR line(s); first ones:"
        echo '```'
        strip_ansi "$TMP/logs/shardpool.log" | grep -m5 -E ' (WARN|ERROR) ' | cut -c1-300
        echo '```'
    } >>"$REPORT"
fi

if [[ -n $OUT ]]; then
    mkdir -p "$OUT"
    cp "$REPORT" "$TMP"/results/*.tsv "$TMP"/pgbouncer.ini "$TMP"/shardpool.toml "$OUT"/
    mkdir -p "$OUT/logs" && cp "$TMP"/logs/*.log "$OUT/logs/"
    log "saved report, raw results and logs in $OUT"
fi
cat "$REPORT"
