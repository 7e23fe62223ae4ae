#!/usr/bin/env bash
# metrics_scrape.sh: does scraping /metrics slow the data path? pgbench -S through shardpool, in rounds of three arms
# run back to back (so drift on a shared machine hits all three alike):
#   none     pgbench alone
#   healthz  pgbench while a tight loop fetches /healthz (what a scrape loop costs the machine: a client process,
#            a connection per request, without rendering anything)
#   metrics  pgbench while the same loop fetches /metrics (the same plus rendering the page)
# "metrics" against "healthz" is the cost of rendering; "healthz" against "none" is the cost of the loop itself,
# which on a 2-core machine takes CPU from pgbench and Postgres whatever it fetches.
#
#   benches/metrics_scrape.sh [SHARDPOOL_BIN]     (default target/release/shardpool; build it with
#                                                  cargo build --release --bin shardpool)
# Env: DURATION (s per run, 10), ROUNDS (5), CLIENTS (10), MODE (prepared).
# Needs: Postgres server binaries + pgbench + psql, curl, python3. As root, Postgres runs as user postgres.
set -euo pipefail

SHARDPOOL_BIN=${1:-target/release/shardpool}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-10}
MODE=${MODE:-prepared}
THREADS=$(( CLIENTS < 2 ? CLIENTS : 2 ))

die() { echo "metrics_scrape.sh: $*" >&2; exit 1; }
[[ -x $SHARDPOOL_BIN ]] || die "no shardpool binary at $SHARDPOOL_BIN"
command -v curl >/dev/null || die "curl is needed"
PG_BINDIR=${SHARDPOOL_PG_BINDIR:-}
if [[ -z $PG_BINDIR ]]; then
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        [[ -x $d/initdb ]] && { PG_BINDIR=$d; break; }
    done
fi
[[ -x $PG_BINDIR/initdb && -x $PG_BINDIR/pgbench ]] || die "no Postgres binaries (set SHARDPOOL_PG_BINDIR)"
AS_PG=()
[[ $EUID == 0 ]] && AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)

TMP=$(mktemp -d)
chmod 755 "$TMP"
SP_PID="" LOOP_PID="" PG_STARTED=0
cleanup() {
    [[ -n $LOOP_PID ]] && kill "$LOOP_PID" 2>/dev/null || true
    [[ -n $SP_PID ]] && kill -TERM "$SP_PID" 2>/dev/null && wait "$SP_PID" 2>/dev/null || true
    [[ $PG_STARTED == 1 ]] && "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

read -r PG_PORT SP_PORT HTTP_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

mkdir -p "$TMP/pgdata" "$TMP/sock"
[[ $EUID == 0 ]] && chown -R postgres:postgres "$TMP"
"${AS_PG[@]}" "$PG_BINDIR/initdb" -D "$TMP/pgdata" -U postgres -A trust -E UTF8 --no-sync >/dev/null
cat >>"$TMP/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
fsync = off
synchronous_commit = off
EOF
"${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -l "$TMP/pgdata/log" -w start >/dev/null
PG_STARTED=1
"$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN" -c "CREATE DATABASE bench OWNER bench"
"$PG_BINDIR/pgbench" -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

cat >"$TMP/shardpool.toml" <<EOF
[general]
listen = "127.0.0.1:$SP_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
pool_size = 10

[[users]]
name = "bench"
auth = "trust"

[databases.bench]
host = "127.0.0.1"
port = $PG_PORT
EOF
"$SHARDPOOL_BIN" --config "$TMP/shardpool.toml" 2>"$TMP/shardpool.log" &
SP_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null || die "shardpool not ready"

ticks() { sed 's/^.*) //' "/proc/$SP_PID/stat" | awk '{ print $12 + $13 }'; }

# run ARM: one pgbench run with the arm's loop around it; prints "tps scrapes/s shardpool-cpu-us/xact".
run() {
    local arm=$1 path="" n_file=$TMP/loops
    echo 0 >"$n_file"
    case $arm in
        healthz) path=/healthz ;;
        metrics) path=/metrics ;;
    esac
    if [[ -n $path ]]; then
        # One process fetching back to back (a curl per fetch would mostly measure process start-up): as tight a
        # loop as one client can make, far beyond Prometheus' one scrape per 15 s.
        python3 - "http://127.0.0.1:$HTTP_PORT$path" "$n_file" <<'PY' &
import sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
n = 0
while True:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
        n += 1
    except Exception:
        pass
    if n % 20 == 0:
        with open(out, "w") as f:
            f.write(str(n))
PY
        LOOP_PID=$!
    fi
    local t0 t1 out xacts
    t0=$(ticks)
    out=$("$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$SP_PORT" -U bench -n -S -M "$MODE" -c "$CLIENTS" -j "$THREADS" \
        -T "$DURATION" bench 2>&1)
    t1=$(ticks)
    if [[ -n $LOOP_PID ]]; then
        kill "$LOOP_PID" 2>/dev/null || true
        wait "$LOOP_PID" 2>/dev/null || true
        LOOP_PID=""
    fi
    xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    local tps
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
    awk -v tps="$tps" -v n="$(cat "$n_file")" -v d="$DURATION" -v dt=$((t1 - t0)) -v x="$xacts" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.0f %.1f %.1f\n", tps, n / d, dt * 1e6 / hz / x }'
}

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pgbench -S -M $MODE -c $CLIENTS -j $THREADS -T $DURATION, $ROUNDS rounds; page: $(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | wc -c) bytes"
printf '%-6s %-8s %10s %10s %14s\n' round arm tps scrapes/s cpu_us/xact
declare -A all
for r in $(seq "$ROUNDS"); do
    for arm in none healthz metrics; do
        read -r tps sps cpu < <(run "$arm")
        printf '%-6s %-8s %10s %10s %14s\n' "$r" "$arm" "$tps" "$sps" "$cpu"
        all[$arm]+="$tps "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
for arm in none healthz metrics; do
    echo "median tps $arm: $(median <<<"${all[$arm]}")"
done
