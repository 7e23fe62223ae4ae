#!/usr/bin/env bash
# per_xact.sh: what one pgbench transaction costs a running pooler, counted exactly rather than timed: syscalls
# (read/recvfrom/write/sendto/epoll_wait/futex), context switches and malloc/free calls per transaction, plus its CPU
# time per transaction. Counts are robust to a noisy shared machine where TPS and CPU time are not; the method and
# the numbers it gave are in docs/benchmarks.md ("Where the cycles go").
#
#   benches/per_xact.sh PORT PID [MODE] [CLIENTS] [SECONDS]
#     PORT     where the pooler listens (database "bench", user "bench", initialised with pgbench -i)
#     PID      the pooler's process id (shardpool or pgbouncer)
#     MODE     pgbench -M: simple (default), extended or prepared
#     CLIENTS  pgbench -c (default 10); -j is 2
#     SECONDS  per run (default 5)
#
# Needs root (perf tracepoints and a uprobe on libc's malloc/free) and perf. Runs pgbench three times: once bare
# (CPU time per transaction), once with syscall tracepoints, once with malloc/free uprobes (these slow the pooler
# down, so their runs' TPS and CPU time are not reported). The uprobes it adds are removed on exit.
set -euo pipefail

PORT=${1:?usage: per_xact.sh PORT PID [MODE] [CLIENTS] [SECONDS]}
PID=${2:?usage: per_xact.sh PORT PID [MODE] [CLIENTS] [SECONDS]}
MODE=${3:-simple}
CLIENTS=${4:-10}
SECONDS_PER_RUN=${5:-5}
THREADS=$(( CLIENTS < 2 ? CLIENTS : 2 ))

PGBENCH=$(command -v pgbench || printf '%s\n' /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)
[[ -x $PGBENCH ]] || { echo "no pgbench found" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
kill -0 "$PID" 2>/dev/null || { echo "no process $PID" >&2; exit 1; }

LIBC=$(awk '$6 ~ /libc\.so/ { print $6; exit }' "/proc/$PID/maps")
TMP=$(mktemp -d)
PROBES_ADDED=0
cleanup() {
    if [[ $PROBES_ADDED == 1 ]]; then
        perf probe -q -d 'probe_libc:malloc' -d 'probe_libc:free' 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# run_pgbench LOG: one pgbench run; prints the number of transactions it completed.
run_pgbench() {
    "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U bench -n -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" \
        -S -M "$MODE" bench >"$1" 2>&1 || { cat "$1" >&2; exit 1; }
    sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1"
}

# counted EVENTS LABEL: a pgbench run with `perf stat -e EVENTS` on the pooler; prints "event=count/xact" pairs.
counted() {
    perf stat -x, -o "$TMP/stat" -e "$1" -p "$PID" -- sleep $((SECONDS_PER_RUN + 1)) &
    local perf_pid=$!
    sleep 0.3
    local xacts
    xacts=$(run_pgbench "$TMP/$2.log")
    wait "$perf_pid"
    printf '%s per xact:' "$2"
    grep -v -e '^#' -e '^$' "$TMP/stat" | while IFS=, read -r value _ event _; do
        event=${event#syscalls:sys_enter_}
        event=${event#probe_libc:}
        printf ' %s=%s' "$event" "$(awk -v v="$value" -v x="$xacts" 'BEGIN { printf "%.2f", v / x }')"
    done
    echo
}

echo "pooler pid $PID on port $PORT: pgbench -S -M $MODE -c $CLIENTS -j $THREADS -T $SECONDS_PER_RUN"

t0=$(ticks "$PID")
xacts=$(run_pgbench "$TMP/bare.log")
t1=$(ticks "$PID")
tps=$(sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p' "$TMP/bare.log")
printf 'bare run: %s TPS, pooler CPU %s us per xact\n' "${tps%.*}" \
    "$(awk -v a="$t0" -v b="$t1" -v x="$xacts" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / x }')"

counted 'syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches' syscalls

if [[ -n $LIBC ]] && perf probe -q -x "$LIBC" --add malloc --add free 2>/dev/null; then
    PROBES_ADDED=1
    counted 'probe_libc:malloc,probe_libc:free' allocations
else
    echo "allocations: could not place uprobes on $LIBC (already placed, or not permitted)"
fi
