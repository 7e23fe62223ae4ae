#!/usr/bin/env bash
# callgrind_per_xact.sh: what one pgbench transaction costs shardpool and PgBouncer, counted rather than timed:
# user-space instructions (callgrind's Ir) and syscalls per transaction, per workload. Counts repeat to within a
# fraction of a per cent on a loaded machine where TPS and CPU time swing by ±10 %, so they are the numbers to judge a
# change to the data path by. They leave out the kernel's share (sends, receives, wake-ups), which the syscall counts
# stand for. Method and results: docs/benchmarks.md ("Issue 15").
#
# Starts a throwaway Postgres, then runs each pooler natively once, to count syscalls (perf tracepoints: a short and
# a long counted run per workload), and under callgrind twice per workload (a warm-up run, then a short or a long
# counted run; counts are dumped when the pooler exits). Per transaction = (long - short) ÷ (transactions in long -
# transactions in short), which cancels what does not scale with the transactions (start-up, pgbench's logins, the
# first use of a server, shutdown). Everything started is stopped on exit.
#
# Knobs (environment):
#   CLIENTS=10           pgbench -c (-j is min(2, CLIENTS))
#   WORKLOADS="select-simple select-extended select-prepared tpcb-simple"
#   XACTS=500            transactions per client in the long counted run (the short one is XACTS / 5); callgrind
#                        runs the pooler ~50x slower, so keep CLIENTS x XACTS in the thousands
#   TARGETS="shardpool pgbouncer"
#   SYSCALLS=1           also count syscalls natively (needs perf with syscall tracepoints; 0 skips)
#   SCALE=10             pgbench -i scale
#   SHARDPOOL_BIN=path   use this binary instead of building (release)
#   SHARDPOOL_WORKERS=0  shardpool [general] workers
#   SHARDPOOL_EXTRA=""   more [general] lines for shardpool.toml (e.g. 'spin_wait = "0"')
#   PGBOUNCER_BIN=path   the PgBouncer to compare against (default: `pgbouncer` on PATH)
#   OUT=dir              keep the callgrind outputs there (callgrind_annotate --inclusive=yes OUT/cg-...)
set -euo pipefail

CLIENTS=${CLIENTS:-10}
WORKLOADS=${WORKLOADS:-"select-simple select-extended select-prepared tpcb-simple"}
XACTS=${XACTS:-500}
TARGETS=${TARGETS:-"shardpool pgbouncer"}
SYSCALLS=${SYSCALLS:-1}
SCALE=${SCALE:-10}
SHARDPOOL_BIN=${SHARDPOOL_BIN:-}
SHARDPOOL_WORKERS=${SHARDPOOL_WORKERS:-0}
SHARDPOOL_EXTRA=${SHARDPOOL_EXTRA:-}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-}
OUT=${OUT:-}
SHORT=$(( XACTS / 5 > 0 ? XACTS / 5 : 1 ))
THREADS=$(( CLIENTS < 2 ? CLIENTS : 2 ))
POOL_SIZE=20

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TMP=""
PG_STARTED=0
POOLER_PID=""
AS_PG=()

# stop_pid PID [TENTHS]: TERM, then KILL after TENTHS tenths of a second (a process under valgrind takes a while to
# exit and write its counts).
stop_pid() {
    local pid=$1 tenths=${2:-100}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$tenths"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$POOLER_PID"
    if [[ $PG_STARTED == 1 ]]; then
        "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $rc != 0 ]]; then
            # shellcheck disable=SC2012 # names are ours
            for f in $(ls -t "$TMP"/*.log 2>/dev/null | head -n 3); do
                printf '\n--- tail of %s ---\n' "$(basename "$f")" >&2
                tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
            done
        fi
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# Prerequisites

command -v valgrind >/dev/null || die "valgrind (callgrind) is needed"
PG_BINDIR=""
for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x $d/initdb ]] && { PG_BINDIR=$d; break; }
done
[[ -n $PG_BINDIR ]] || die "no Postgres server binaries (initdb) found"
PGBENCH=$PG_BINDIR/pgbench
PSQL=$PG_BINDIR/psql
if [[ $EUID == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no 'postgres' user"
    # setpriv execs in place, so "$!" is the server's own pid.
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
if [[ $SYSCALLS == 1 ]] && ! perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    log "perf cannot count syscall tracepoints here: syscall counts skipped"
    SYSCALLS=0
fi

if [[ " $TARGETS " == *" pgbouncer "* ]]; then
    PGBOUNCER=${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
    [[ -x $PGBOUNCER ]] || die "no PgBouncer at $PGBOUNCER (set PGBOUNCER_BIN)"
    PGBOUNCER=$(realpath "$PGBOUNCER")
    PGBOUNCER_VERSION=$("$PGBOUNCER" --version | head -n1)
    log "PgBouncer: $PGBOUNCER_VERSION ($PGBOUNCER)"
fi
if [[ " $TARGETS " == *" shardpool "* && -z $SHARDPOOL_BIN ]]; then
    log "building shardpool (release)"
    (cd "$REPO" && cargo build --release --bin shardpool --quiet) || die "cargo build failed"
    SHARDPOOL_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/shardpool
fi

TMP=$(mktemp -d /tmp/shardpool-callgrind.XXXXXX)
mkdir -p "$TMP/cg" "$TMP/sock"
if [[ -n $SHARDPOOL_BIN ]]; then
    # A private copy: a shared target dir's binary can be replaced by another checkout's build meanwhile.
    cp "$SHARDPOOL_BIN" "$TMP/shardpool"
fi
[[ $EUID == 0 ]] && chown -R postgres:postgres "$TMP"
chmod 755 "$TMP"

read -r PG_PORT POOLER_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# ---------------------------------------------------------------------------------------------------------------
# Postgres (settings as in pgbench_compare.sh)

log "initdb + Postgres on 127.0.0.1:$PG_PORT"
"${AS_PG[@]}" "$PG_BINDIR/initdb" -D "$TMP/pgdata" -U postgres -A trust -E UTF8 --no-sync >"$TMP/initdb.log" 2>&1 \
    || die "initdb failed"
cat >>"$TMP/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
"${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -l "$TMP/postgres.log" -w -t 60 start >/dev/null \
    || die "Postgres did not start"
PG_STARTED=1
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$TMP/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed"

# ---------------------------------------------------------------------------------------------------------------
# Pooler configurations (as in pgbench_compare.sh)

cat >"$TMP/userlist.txt" <<EOF
"bench" ""
EOF
cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
EOF
cat >"$TMP/shardpool.toml" <<EOF
[general]
listen = "127.0.0.1:$POOLER_PORT"
workers = $SHARDPOOL_WORKERS
pool_mode = "transaction"
pool_size = $POOL_SIZE
ignore_startup_parameters = ["extra_float_digits"]
$SHARDPOOL_EXTRA

[[users]]
name = "bench"
auth = "trust"

[databases.bench]
host = "127.0.0.1"
port = $PG_PORT
EOF
[[ $EUID == 0 ]] && chown postgres:postgres "$TMP"/*.ini "$TMP"/*.txt "$TMP"/*.toml

# start_pooler TARGET [WRAPPER...]: starts it (under WRAPPER, e.g. valgrind) and waits until a query goes through.
start_pooler() {
    local target=$1
    shift
    case $target in
        shardpool) "$@" "$TMP/shardpool" --config "$TMP/shardpool.toml" >>"$TMP/$target.log" 2>&1 & ;;
        pgbouncer) "${AS_PG[@]}" "$@" "$PGBOUNCER" "$TMP/pgbouncer.ini" >>"$TMP/$target.log" 2>&1 & ;;
    esac
    POOLER_PID=$!
    for _ in $(seq 300); do
        kill -0 "$POOLER_PID" 2>/dev/null || die "$target exited during startup"
        if "$PSQL" -X -q -At -h 127.0.0.1 -p "$POOLER_PORT" -U bench -d bench -c "SELECT 1" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    die "$target did not answer within 60 s"
}

workload_args() {
    case $1 in
        select-simple) echo "-S -M simple" ;;
        select-extended) echo "-S -M extended" ;;
        select-prepared) echo "-S -M prepared" ;;
        tpcb-simple) echo "-M simple" ;;
        *) die "unknown workload $1" ;;
    esac
}

# pgbench_run WORKLOAD XACTS_PER_CLIENT: a fixed number of transactions; fails loudly if any failed.
pgbench_run() {
    local wl=$1 t=$2 logf="$TMP/pgbench-last.log" args
    read -r -a args <<<"$(workload_args "$wl")"
    "$PGBENCH" -h 127.0.0.1 -p "$POOLER_PORT" -U bench -n -c "$CLIENTS" -j "$THREADS" -t "$t" "${args[@]}" bench \
        >"$logf" 2>&1 || { cat "$logf" >&2; die "pgbench failed ($wl)"; }
    local done
    done=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$logf")
    [[ $done == $((CLIENTS * t)) ]] || { cat "$logf" >&2; die "pgbench processed $done of $((CLIENTS * t))"; }
}

RESULTS=$TMP/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

SYSCALL_EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_read
# syscalls_during WORKLOAD XACTS FILE: perf-counts the pooler's syscalls over one pgbench run (stopped with SIGINT,
# on which perf stat prints its counts).
syscalls_during() {
    perf stat -x, -o "$3" -e "$SYSCALL_EVENTS" -p "$POOLER_PID" &
    local perf_pid=$!
    sleep 0.5
    pgbench_run "$1" "$2"
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
}
count_of() { awk -F, -v e="$2" '$3 == e { print $1 }' "$1"; }

value() { awk -F'\t' -v w="$1" -v t="$2" -v k="$3" '$1 == w && $2 == t && $3 == k { print $4 }' "$RESULTS"; }
# Inclusive Ir of the session tasks (what shardpool's listener spawns per client) in a callgrind output.
session_ir() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
        | grep 'listener.rs:shardpool::frontend::listener::accept_loop::{{closure}}::{{closure}}' \
        | awk '{ gsub(",", "", $1); if ($1 + 0 > max) max = $1 + 0 } END { if (max) print max }'
}

# ---------------------------------------------------------------------------------------------------------------
# Measurements

for target in $TARGETS; do
    if [[ $SYSCALLS == 1 ]]; then
        log "$target: syscalls per transaction (native)"
        start_pooler "$target"
        for wl in $WORKLOADS; do
            pgbench_run "$wl" "$SHORT"
            syscalls_during "$wl" "$SHORT" "$TMP/sys-short"
            syscalls_during "$wl" "$XACTS" "$TMP/sys-long"
            xacts=$(( CLIENTS * (XACTS - SHORT) ))
            for ev in ${SYSCALL_EVENTS//,/ }; do
                a=$(count_of "$TMP/sys-short" "$ev")
                b=$(count_of "$TMP/sys-long" "$ev")
                name=${ev#syscalls:sys_enter_}
                [[ $name == raw_syscalls:sys_enter ]] && name=syscalls
                record "$wl" "$target" "$name" "$(awk -v a="$a" -v b="$b" -v x="$xacts" 'BEGIN { printf "%.2f", (b - a) / x }')"
            done
            log "  $wl: $(awk -F'\t' -v w="$wl" -v t="$target" '$1 == w && $2 == t { printf "%s=%s ", $3, $4 }' "$RESULTS")"
        done
        stop_pid "$POOLER_PID"
        POOLER_PID=""
    fi

    log "$target: instructions per transaction (callgrind)"
    for wl in $WORKLOADS; do
        # One pooler process per run length, each dumping its counts when it exits: the difference of the two is
        # the counted transactions' share alone (start-up, warm-up, logins and shutdown cancel).
        for len in "$SHORT" "$XACTS"; do
            cgout=$TMP/cg/cg-$target-$wl-$len.out
            start_pooler "$target" valgrind --tool=callgrind --callgrind-out-file="$cgout" --dump-instr=no
            pgbench_run "$wl" "$SHORT"
            pgbench_run "$wl" "$len"
            stop_pid "$POOLER_PID" 600
            POOLER_PID=""
            grep -q '^totals:' "$cgout" 2>/dev/null || die "callgrind wrote no totals to $cgout"
        done
        a=$(awk '/^totals:/ { print $2 }' "$TMP/cg/cg-$target-$wl-$SHORT.out")
        b=$(awk '/^totals:/ { print $2 }' "$TMP/cg/cg-$target-$wl-$XACTS.out")
        ir=$(( (b - a) / (CLIENTS * (XACTS - SHORT)) ))
        record "$wl" "$target" ir "$ir"
        if [[ $target == shardpool ]] && command -v callgrind_annotate >/dev/null; then
            # Of which the client sessions' tasks (all of shardpool's own per-transaction work, minus the runtime's
            # scheduling and parking): steadier than the total, whose parking share depends on how often the
            # runtime ran out of work, i.e. on timing.
            a=$(session_ir "$TMP/cg/cg-$target-$wl-$SHORT.out")
            b=$(session_ir "$TMP/cg/cg-$target-$wl-$XACTS.out")
            [[ -n $a && -n $b ]] && record "$wl" "$target" session_ir $(( (b - a) / (CLIENTS * (XACTS - SHORT)) ))
        fi
        sess=$(value "$wl" "$target" session_ir)
        log "  $wl: $ir Ir per transaction${sess:+ (sessions: $sess)}"
    done
done

# ---------------------------------------------------------------------------------------------------------------
# Report

{
    echo "### Per transaction, counted: $CLIENTS clients, $((CLIENTS * (XACTS - SHORT))) transactions per cell"
    echo
    echo "shardpool $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (dirty)'), workers = $SHARDPOOL_WORKERS${SHARDPOOL_EXTRA:+, $SHARDPOOL_EXTRA}; ${PGBOUNCER_VERSION:-PgBouncer not run}; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| workload | shardpool Ir/xact | of which sessions | PgBouncer Ir/xact | ratio | shardpool syscalls/xact | PgBouncer syscalls/xact |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for wl in $WORKLOADS; do
        sp=$(value "$wl" shardpool ir)
        pgb=$(value "$wl" pgbouncer ir)
        r="—"
        [[ -n $sp && -n $pgb ]] && r=$(awk -v a="$sp" -v b="$pgb" 'BEGIN { printf "%.2f×", a / b }')
        sys_sp=$(value "$wl" shardpool syscalls)
        sys_pgb=$(value "$wl" pgbouncer syscalls)
        sess=$(value "$wl" shardpool session_ir)
        echo "| $wl | ${sp:-—} | ${sess:-—} | ${pgb:-—} | $r | ${sys_sp:-—} | ${sys_pgb:-—} |"
    done
    if [[ $SYSCALLS == 1 ]]; then
        echo
        echo "Syscalls per transaction by kind (recvfrom / sendto / epoll_wait / futex / write / read):"
        echo
        for wl in $WORKLOADS; do
            for t in $TARGETS; do
                printf -- '- %s, %s: %s / %s / %s / %s / %s / %s\n' "$wl" "$t" "$(value "$wl" "$t" recvfrom)" \
                    "$(value "$wl" "$t" sendto)" "$(value "$wl" "$t" epoll_wait)" "$(value "$wl" "$t" futex)" \
                    "$(value "$wl" "$t" write)" "$(value "$wl" "$t" read)"
            done
        done
    fi
    echo
    echo "Ir = user-space instructions (callgrind), (long run - short run) / transactions; kernel work is not in it."
    echo "\"of which sessions\": the client sessions' tasks alone, without the runtime's scheduling and parking."
    echo "Command: CLIENTS=$CLIENTS XACTS=$XACTS WORKLOADS=\"$WORKLOADS\" ${PGBOUNCER:+PGBOUNCER_BIN=$PGBOUNCER }benches/callgrind_per_xact.sh"
} | tee "$TMP/report.md"

if [[ -n $OUT ]]; then
    mkdir -p "$OUT"
    cp "$TMP"/cg/cg-*.out "$TMP/report.md" "$RESULTS" "$OUT"/
    log "callgrind outputs in $OUT (callgrind_annotate --inclusive=yes $OUT/cg-shardpool-tpcb-simple-$XACTS.out)"
fi
