#!/usr/bin/env bash
# What each consistency mode costs under a mixed load: `shardpool demo` (primary, a replica, a replica 2 s behind,
# synchronous_commit = on) and, per mode, one pgbench run of 20 % writes (an INSERT) and 80 % reads (a SELECT by key)
# with the mode set from the connection's startup packet (PGOPTIONS="-c shardpool.consistency=<mode>"). Prints a
# Markdown table: transactions per second, read and write latency (pgbench's per-script averages), and which server
# served the reads (SHOW REPLICAS reads_served, before and after the run); medians of REPEATS interleaved rounds.
#
#   cargo build --release --bin shardpool
#   benches/consistency_modes.sh                  # DURATION=10 REPEATS=3 CLIENTS=8 THREADS=2 by default (~4 min)
#   MODES="read_proxy_writes read_all_writes" DURATION=5 benches/consistency_modes.sh
set -euo pipefail

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
MODES=${MODES:-"eventual bounded_staleness(500ms) read_your_writes read_proxy_writes read_all_writes strong"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SHARDPOOL_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/shardpool}
PGBIN=${SHARDPOOL_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
TMP=$(mktemp -d)
DEMO_PID=

cleanup() {
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -INT "$DEMO_PID"
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[[ -x "$BIN" ]] || { echo "build first: cargo build --release --bin shardpool" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" demo --port "$PORT" >"$TMP/demo.out" 2>"$TMP/demo.err" &
DEMO_PID=$!
for _ in $(seq 1 600); do
    grep -q "Press Ctrl-C" "$TMP/demo.out" 2>/dev/null && break
    kill -0 "$DEMO_PID" 2>/dev/null || { cat "$TMP/demo.err" >&2; exit 1; }
    sleep 0.1
done
grep -q "Press Ctrl-C" "$TMP/demo.out" || { echo "demo did not start" >&2; exit 1; }

export PGPASSWORD=app PGHOST=127.0.0.1 PGPORT=$PORT
admin() { PGPASSWORD=admin "$PGBIN/psql" -X -A -t -F'|' -U admin -d shardpool -c "$1"; }
# port -> reads_served of database app
reads() { admin "SHOW REPLICAS" | awk -F'|' '$1 == "app" { print $4, $14 }' | sort; }
# questions read_all_writes reads asked the primary so far
asked() { admin "SHOW REPLICAS" | awk -F'|' '$1 == "app" && $6 == "t" { print $19 }'; }

cat >"$TMP/write.sql" <<'SQL'
INSERT INTO accounts (owner) VALUES ('bench');
SQL
cat >"$TMP/read.sql" <<'SQL'
\set id random(1, 100)
SELECT owner, balance FROM accounts WHERE id = :id;
SQL

REPLICA=$(awk '/^  replica/ { split($4, a, ":"); print a[2] }' "$TMP/demo.out")
DELAYED=$(awk '/^  delayed/ { split($4, a, ":"); print a[2] }' "$TMP/demo.out")

run_mode() { # mode -> one line: mode tps read_ms write_ms on_replica on_delayed on_primary questions
    local mode=$1 before after n r d p q0
    before=$(reads)
    q0=$(asked)
    PGOPTIONS="-c shardpool.consistency=$mode" "$PGBIN/pgbench" -n -U app -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
        -f "$TMP/write.sql@1" -f "$TMP/read.sql@4" app >"$TMP/run.out" 2>&1 || { cat "$TMP/run.out" >&2; exit 1; }
    after=$(reads)
    delta() { # port
        local b a
        b=$(awk -v p="$1" '$1 == p { print $2 }' <<<"$before")
        a=$(awk -v p="$1" '$1 == p { print $2 }' <<<"$after")
        echo $((a - b))
    }
    # per-script blocks: "SQL script N: <file>" ... " - N transactions (...)" ... " - latency average = X ms"
    lat() { awk -v f="$1" '/^SQL script/ { cur = index($0, f) > 0 } cur && /latency average/ { print $5; exit }' "$TMP/run.out"; }
    # reads pgbench ran; those the replicas did not serve ran on the primary
    # (pgbench counts the reads that completed within -T; the last few in flight are served but not counted)
    n=$(awk '/^SQL script/ { cur = index($0, "read.sql") > 0 } cur && / transactions \(/ { print $2; exit }' "$TMP/run.out")
    r=$(delta "$REPLICA"); d=$(delta "$DELAYED"); p=$((n - r - d)); ((p >= 0)) || p=0
    echo "$mode $(awk '/^tps = / { printf "%d", $3 }' "$TMP/run.out") $(lat read.sql) $(lat write.sql) $r $d $p $(($(asked) - q0))"
}

# Modes interleaved, REPEATS rounds, so background load hits every mode alike; medians are reported.
for rep in $(seq 1 "$REPEATS"); do
    for mode in $MODES; do
        echo "round $rep: $mode" >&2
        run_mode "$mode" >>"$TMP/results"
    done
done
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "| mode | TPS | read latency (ms) | write latency (ms) | reads on replica | on delayed replica | on primary | replica share | questions to the primary |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in $MODES; do
    col() { awk -v m="$mode" -v c="$1" '$1 == m { print $c }' "$TMP/results" | median; }
    r=$(col 5); d=$(col 6); p=$(col 7)
    share=$(awk -v r="$r" -v d="$d" -v p="$p" 'BEGIN { t = r + d + p; if (t > 0) printf "%.0f %%", 100 * (r + d) / t; else print "-" }')
    echo "| \`$mode\` | $(col 2) | $(col 3) | $(col 4) | $r | $d | $p | $share | $(col 8) |"
done
