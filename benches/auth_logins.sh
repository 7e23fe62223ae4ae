#!/usr/bin/env bash
# auth_logins.sh: what a client login costs through shardpool for each place a user's secret can come from: a
# [[users]] entry, auth_file, auth_query with the answer cached, and auth_query looked up on every login (a TTL of
# 1 ms). pgbench -C opens a new connection (a full SCRAM login) for every transaction; "logins/s" is its TPS.
#
#   benches/auth_logins.sh [SHARDPOOL_BINARY] [SECONDS]
#
# Starts a throwaway Postgres (SHARDPOOL_PG_BINDIR or the newest /usr/lib/postgresql/*/bin) whose pg_hba.conf
# demands SCRAM, and one shardpool per variant. Numbers from a debug binary compare the variants with each other only.
set -euo pipefail

BIN=${1:-target/release/shardpool}
SECS=${2:-5}
PGBIN=${SHARDPOOL_PG_BINDIR:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
TMP=$(mktemp -d)
PGPORT=$((20000 + RANDOM % 10000))
PROXYPORT=$((PGPORT + 1))
cleanup() {
    [[ -n ${PROXY_PID:-} ]] && kill "$PROXY_PID" 2>/dev/null || true
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
# Postgres refuses to run as root: its tools then run as the postgres account.
AS=()
if [[ $EUID == 0 ]]; then
    AS=(runuser -u postgres --)
    chown postgres "$TMP"
fi

"${AS[@]}" "$PGBIN/initdb" -D "$TMP/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$TMP/data" -l "$TMP/pg.log" -w \
    -o "-p $PGPORT -k $TMP -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
psql() { "$PGBIN/psql" -X -q -A -t -h "$TMP" -p "$PGPORT" -U postgres -d postgres "$@"; }
for u in confuser fileuser queryuser; do psql -c "CREATE ROLE $u LOGIN PASSWORD 'pw'"; done
psql -c "CREATE ROLE authuser LOGIN SUPERUSER PASSWORD 'authpw'"
psql -c "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid WHERE rolname = 'fileuser'" \
    >"$TMP/userlist.txt"
echo "SELECT 1;" >"$TMP/select1.sql"

run() { # run LABEL USER EXTRA_GENERAL
    cat >"$TMP/shardpool.toml" <<EOF
[general]
listen = "127.0.0.1:$PROXYPORT"
auth_file = "$TMP/userlist.txt"
auth_user = "authuser"
$3
[[users]]
name = "confuser"
password = "pw"
[[users]]
name = "authuser"
password = "authpw"
[databases.postgres]
port = $PGPORT
EOF
    RUST_LOG=warn "$BIN" --config "$TMP/shardpool.toml" 2>"$TMP/proxy.log" &
    PROXY_PID=$!
    for _ in $(seq 100); do
        PGPASSWORD=pw "$PGBIN/psql" -X -h 127.0.0.1 -p "$PROXYPORT" -U "$2" -c "SELECT 1" postgres >/dev/null 2>&1 && break
        sleep 0.1
    done
    local tps
    tps=$(PGPASSWORD=pw "$PGBIN/pgbench" -n -C -c 4 -j 2 -T "$SECS" -f "$TMP/select1.sql" \
        -h 127.0.0.1 -p "$PROXYPORT" -U "$2" postgres 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    printf '%-28s %10s logins/s\n' "$1" "$tps"
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
}

run "[[users]] (plain password)" confuser ""
run "auth_file (SCRAM verifier)" fileuser ""
run "auth_query, cached" queryuser 'auth_cache_ttl = "60s"'
run "auth_query, every login" queryuser 'auth_cache_ttl = "1ms"'
