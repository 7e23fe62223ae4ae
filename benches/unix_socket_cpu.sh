#!/usr/bin/env bash
# unix_socket_cpu.sh: what reaching the server over its Unix socket instead of loopback TCP saves in pooler CPU per
# transaction, for shardpool and PgBouncer configured the same way, in one run.
#
# Starts a throwaway Postgres (TCP on 127.0.0.1 and a private socket directory), and four poolers on free ports:
# shardpool and PgBouncer, each once with the server at 127.0.0.1 and once at the socket directory (TLS off for all:
# this compares transports only). pgbench -S in simple and extended mode runs against each, interleaved within every
# repeat so background load spreads over all four alike. Pooler CPU is utime+stime from /proc/PID/stat over the run,
# divided by the transactions pgbench completed. Prints a Markdown table of medians; stops everything it started (by
# pid) on exit.
#
# Knobs (environment):
#   DURATION=10   seconds per pgbench run        REPEATS=3   interleaved repeats (medians are reported)
#   CLIENTS=10    pgbench clients                 SCALE=10    pgbench -i scale
#   SHARDPOOL_BIN=path  use this binary instead of building (release)
#   PGBOUNCER=path      PgBouncer binary (default: the one /work/shared/tools/build-pgbouncer-1.24.sh builds)
set -euo pipefail

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CLIENTS=${CLIENTS:-10}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-10}
SHARDPOOL_BIN=${SHARDPOOL_BIN:-}
PGBOUNCER=${PGBOUNCER:-}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

TMP=""
PG_STARTED=0
PIDS=()
AS_PG=()
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ $PG_STARTED == 1 ]]; then
        "${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PG_BINDIR=""
for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [[ -x $d/initdb ]] && { PG_BINDIR=$d; break; }
done
[[ -n $PG_BINDIR ]] || die "no Postgres server binaries found"
PGBENCH=$PG_BINDIR/pgbench
PSQL=$PG_BINDIR/psql
if [[ $EUID == 0 ]]; then
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
if [[ -z $PGBOUNCER ]]; then
    builder=/work/shared/tools/build-pgbouncer-1.24.sh
    [[ -x $builder || -f $builder ]] || builder=$REPO/../shared/tools/build-pgbouncer-1.24.sh
    PGBOUNCER=$(bash "$builder" | tail -n 1)
fi
[[ -x $PGBOUNCER ]] || die "no PgBouncer at $PGBOUNCER"
if [[ -z $SHARDPOOL_BIN ]]; then
    log "building shardpool (release)"
    (cd "$REPO" && cargo build --release --bin shardpool --quiet) || die "cargo build failed"
    SHARDPOOL_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/shardpool
fi
CLK_TCK=$(getconf CLK_TCK)

TMP=$(mktemp -d /tmp/shardpool-unixbench.XXXXXX)
mkdir -p "$TMP/logs" "$TMP/sock"
cp "$SHARDPOOL_BIN" "$TMP/shardpool"
[[ $EUID == 0 ]] && chown -R postgres:postgres "$TMP"
chmod 755 "$TMP"
read -r PG_PORT SPT SPU PBT PBU < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

log "initdb + Postgres on 127.0.0.1:$PG_PORT and $TMP/sock"
"${AS_PG[@]}" "$PG_BINDIR/initdb" -D "$TMP/pgdata" -U postgres -A trust -E UTF8 --no-sync >"$TMP/logs/initdb.log" 2>&1
cat >>"$TMP/pgdata/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/sock'
max_connections = 100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = off
EOF
printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$TMP/pgdata/pg_hba.conf"
"${AS_PG[@]}" "$PG_BINDIR/pg_ctl" -D "$TMP/pgdata" -l "$TMP/logs/postgres.log" -w -t 60 start >/dev/null
PG_STARTED=1
"$PSQL" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE ROLE bench LOGIN" \
    -c "CREATE DATABASE bench OWNER bench"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$TMP/logs/init.log" 2>&1

# target name -> port, and the server host each pooler is given.
declare -A PORT=([sp-tcp]=$SPT [sp-unix]=$SPU [pgb-tcp]=$PBT [pgb-unix]=$PBU)
declare -A PID=()
host_for() { case $1 in *-tcp) echo 127.0.0.1 ;; *-unix) echo "$TMP/sock" ;; esac; }

echo '"bench" ""' >"$TMP/userlist.txt"
for t in pgb-tcp pgb-unix; do
    cat >"$TMP/$t.ini" <<EOF
[databases]
bench = host=$(host_for $t) port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[$t]}
unix_socket_dir =
auth_type = trust
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
EOF
done
for t in sp-tcp sp-unix; do
    cat >"$TMP/$t.toml" <<EOF
[general]
listen = "127.0.0.1:${PORT[$t]}"
pool_mode = "transaction"
pool_size = $POOL_SIZE
server_tls_mode = "disable"
[[users]]
name = "bench"
auth = "trust"
[databases.bench]
host = "$(host_for $t)"
port = $PG_PORT
EOF
done
[[ $EUID == 0 ]] && chown postgres:postgres "$TMP"/*.ini "$TMP"/userlist.txt

wait_ready() {
    local t=$1
    for _ in $(seq 150); do
        kill -0 "${PID[$t]}" 2>/dev/null || die "$t exited during startup"
        "$PSQL" -X -q -At -h 127.0.0.1 -p "${PORT[$t]}" -U bench -d bench -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$t did not answer"
}
for t in pgb-tcp pgb-unix; do
    "${AS_PG[@]}" "$PGBOUNCER" "$TMP/$t.ini" >>"$TMP/logs/$t.log" 2>&1 &
    PID[$t]=$!; PIDS+=("$!"); wait_ready "$t"
done
for t in sp-tcp sp-unix; do
    "$TMP/shardpool" --config "$TMP/$t.toml" >>"$TMP/logs/$t.log" 2>&1 &
    PID[$t]=$!; PIDS+=("$!"); wait_ready "$t"
done
# Each pooler's server connections really use the transport it was given (inet_server_addr is NULL on a socket).
for t in sp-tcp sp-unix pgb-tcp pgb-unix; do
    over=$("$PSQL" -X -At -h 127.0.0.1 -p "${PORT[$t]}" -U bench -d bench -c "SELECT inet_server_addr() IS NULL")
    want=f; [[ $t == *-unix ]] && want=t
    [[ $over == "$want" ]] || die "$t: server connection over the wrong transport"
done

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
RESULTS=$TMP/results.tsv
: >"$RESULTS"
TARGETS=(sp-tcp sp-unix pgb-tcp pgb-unix)
log "$((REPEATS * 2 * 4)) runs of ${DURATION}s, $CLIENTS clients"
for rep in $(seq "$REPEATS"); do
    for mode in simple extended; do
        # Rotate the order every repeat, so no target always runs first (or right after the same neighbour).
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            t=${TARGETS[$(( (i + rep) % n ))]}
            c0=$(cpu_ticks "${PID[$t]}")
            out=$("$PGBENCH" -h 127.0.0.1 -p "${PORT[$t]}" -U bench -n -S -M "$mode" -c "$CLIENTS" -j 2 \
                -T "$DURATION" bench 2>&1) || die "pgbench against $t failed: $out"
            c1=$(cpu_ticks "${PID[$t]}")
            xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
            tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
            cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK ))
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$t" "$rep" "$tps" "$xacts" "$cpu_us" >>"$RESULTS"
            log "  $mode $t #$rep: tps=$tps cpu=${cpu_us}us -> $(( cpu_us * 1000 / (xacts > 0 ? xacts : 1) ))ns/xact"
        done
    done
done

python3 - "$RESULTS" <<'EOF'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cell = {}
for mode, t, rep, tps, xacts, cpu in rows:
    cell.setdefault((mode, t), []).append((float(tps), int(cpu) / max(int(xacts), 1)))
print("| pgbench -S | pooler | server over | median tps | median pooler CPU per xact (us) | Unix vs TCP |")
print("|---|---|---|---|---|---|")
for mode in ("simple", "extended"):
    for pooler, name in (("sp", "shardpool"), ("pgb", "PgBouncer 1.24")):
        base = None
        for tr in ("tcp", "unix"):
            vals = cell.get((mode, f"{pooler}-{tr}"), [])
            if not vals:
                continue
            tps = st.median(v[0] for v in vals)
            cpu = st.median(v[1] for v in vals)
            if tr == "tcp":
                base, delta = cpu, ""
            else:
                delta = f"{(cpu - base) / base * 100:+.0f}% CPU/xact" if base else ""
            print(f"| -M {mode} | {name} | {tr.upper() if tr == 'tcp' else 'Unix socket'} | {tps:,.0f} | {cpu:.1f} | {delta} |")
print()
print("raw runs (mode, target, repeat, tps, xacts, cpu_us):")
for r in rows:
    print("  " + " ".join(r))
EOF
