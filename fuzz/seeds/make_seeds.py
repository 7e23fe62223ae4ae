#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: real protocol messages built here, and SQL and COPY data
taken from shardpool's own unit tests. Run from the repository root: python3 fuzz/seeds/make_seeds.py
Re-running replaces the seed files it wrote (named seed-*); inputs added by hand keep other names."""

import glob
import hashlib
import os
import re
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def write(target, items):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, "seed-*")):
        os.remove(f)
    seen = set()
    for item in items:
        if isinstance(item, str):
            item = item.encode()
        if item in seen:
            continue
        seen.add(item)
        name = "seed-" + hashlib.sha1(item).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(item)


def msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


# ---- client messages ----
def query(sql):
    return msg(b"Q", cstr(sql))


def parse(name, sql, oids=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def bind(portal, stmt, params, formats=(), result_formats=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)
    return msg(b"B", body)


def target(tag, kind, name):
    return msg(tag, kind + cstr(name))


def execute(portal="", rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!i", rows))


SYNC, FLUSH, TERMINATE = msg(b"S", b""), msg(b"H", b""), msg(b"X", b"")


def client_streams():
    yield query("SELECT 1")
    yield query("BEGIN; UPDATE accounts SET abalance = abalance + 1 WHERE aid = 5; COMMIT;")
    yield parse("", "SELECT * FROM accounts WHERE aid = $1", [23]) + bind("", "", [b"5"]) + target(b"D", b"P", "") + execute() + SYNC
    yield parse("s1", "INSERT INTO t VALUES ($1, $2)", [20, 25]) + SYNC + bind("p1", "s1", [b"\0\0\0\0\0\0\0\x07", None], [1, 0], [1]) + execute("p1", 10) + FLUSH
    yield target(b"C", b"S", "s1") + target(b"C", b"P", "p1") + target(b"D", b"S", "s1") + SYNC + TERMINATE
    yield msg(b"p", cstr("md5" + "0" * 32))
    yield msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 32) + b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvYDp")
    yield msg(b"d", b"1\tone\n2\ttwo\n") + msg(b"c", b"") + msg(b"f", cstr("cancelled"))
    yield msg(b"F", struct.pack("!I", 1598) + struct.pack("!hh", 0, 0) + struct.pack("!h", 0))
    yield query("SELECT 1")[:7]  # cut short
    yield b"Q\xff\xff\xff\xff"


# ---- server messages ----
def row_description(cols):
    body = struct.pack("!h", len(cols))
    for name, oid in cols:
        body += cstr(name) + struct.pack("!IhIhih", 16384, 1, oid, -1, -1, 0)
    return msg(b"T", body)


def data_row(values):
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def error(fields):
    return msg(b"E", b"".join(k + cstr(v) for k, v in fields) + b"\0")


def server_streams():
    yield msg(b"R", struct.pack("!i", 0)) + msg(b"S", cstr("server_version") + cstr("15.4")) + msg(b"K", struct.pack("!ii", 4242, 99)) + msg(b"Z", b"I")
    yield row_description([("aid", 23), ("total", 1700), ("at", 1184), ("name", 25), ("ok", 16), ("f", 701)]) + data_row(
        [b"5", b"12.50", b"2024-02-29 13:14:15.123456+01", b"caf\xc3\xa9", b"t", b"-Infinity"]
    ) + data_row([b"-9223372036854775808", b"NaN", b"infinity", None, b"f", b"1e-300"]) + msg(b"C", cstr("SELECT 2")) + msg(b"Z", b"T")
    yield error([(b"S", "ERROR"), (b"V", "ERROR"), (b"C", "23505"), (b"M", "duplicate key"), (b"D", "Key (aid)=(5) exists."), (b"P", "15")]) + msg(b"Z", b"E")
    yield msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0") + msg(b"1", b"") + msg(b"2", b"") + msg(b"n", b"") + msg(b"3", b"") + msg(b"I", b"") + msg(b"s", b"")
    yield data_row([b"0.000001", b"123456789012345678901234567890.5", b"-0", b"+.5", b"1.50"])
    yield data_row([b"2024-01-01", b"12:34:56.789", b"2000-01-01 00:00:00", b"0001-01-01 00:00:00 BC", b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
    yield msg(b"G", struct.pack("!bh", 0, 2) + struct.pack("!hh", 0, 0)) + msg(b"d", b"1\tx\n") + msg(b"c", b"")
    yield msg(b"A", struct.pack("!i", 77) + cstr("chan") + cstr("payload")) + msg(b"t", struct.pack("!hI", 1, 23))


# ---- startup ----
def startup(pairs, version=196608):
    body = struct.pack("!I", version) + b"".join(cstr(k) + cstr(v) for k, v in pairs) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def startup_packets():
    yield startup([("user", "app"), ("database", "shop")])
    yield startup([("user", "app"), ("database", "shop"), ("application_name", "psql"), ("client_encoding", "UTF8"),
                   ("options", "-c search_path=public -c statement_timeout=5s --work_mem=64MB -c x=a\\ b")])
    yield startup([("user", "app"), ("_pq_.compression", "on")], 196610)
    yield startup([("user", "app")], 131072)
    yield startup([("database", "shop")])
    yield struct.pack("!iIii", 16, 80877102, 1234, 5678)
    yield struct.pack("!iI", 8, 80877103)
    yield struct.pack("!iI", 8, 80877104)


# ---- auth ----
def scram_seeds():
    # RFC 7677's example exchange (user "user", password "pencil").
    verifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dM="
    first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    yield verifier + "\0" + first + "\0" + final
    yield "pencil\0" + first + "\0" + final
    yield "\0y,,n=,r=abc\0c=eSws,r=abc,p=AAAA"
    yield "p\x01w\0n,a=admin,n=,r=x\0c=biws,r=x,e=ext,p="
    yield "SCRAM-SHA-256$1:c2FsdA==$" + "A" * 43 + "=:" + "B" * 43 + "=\0p=tls-unique,,n=,r=x\0"


def md5_seeds():
    yield "postgres\0secret\0md5" + "0" * 32
    yield "app\0md5" + hashlib.md5(b"secretapp").hexdigest() + "\0\x01\x02\x03\x04"
    yield "\0\0"


# ---- SQL from the unit tests ----
SQL_START = re.compile(r"^\s*(/\*|--|select|insert|update|delete|with|begin|start|commit|end|rollback|abort|set|reset|show|copy|create|drop|alter|explain|declare|fetch|close|values|table|listen|unlisten|notify|prepare|execute|deallocate|discard|do|lock|truncate|savepoint|release|grant|vacuum|analyze|merge|call|\()", re.I)
LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def unescape(s):
    return (s.replace("\\\\", "\0BS").replace('\\"', '"').replace("\\n", "\n").replace("\\t", "\t")
            .replace("\\'", "'").replace("\0BS", "\\"))


def sql_from(paths):
    out = []
    for path in paths:
        for p in glob.glob(os.path.join(ROOT, path), recursive=True):
            text = open(p, encoding="utf-8").read()
            for m in LITERAL.finditer(text):
                s = unescape(m.group(1))
                if SQL_START.match(s) and len(s) < 600 and "{" not in s:
                    out.append(s)
    return sorted(set(out))


def copy_seeds():
    yield b"\0\x00" + b"1\ta\\tb\n-2\t\\N\n3\tline\\\nbreak\n\\x34\t\\\\\n\\065\tz\n  6 \t\xc3\xa9\n\\.\nafter\n"
    yield b"\0\x01" + b"x,cl\xc3\xa9\r\ny,\\303\\251\r\nz,nil\r\n\\.\r\n"
    yield b"\0\x02" + b"id,\"no\nte\"\n1,\"a,b\"\n2,\"multi\r\nline \"\"quoted\"\"\"\n\"3\",\n4,\\.\n\\.\nignored\n"
    yield b"\0\x03" + b"x;'k\\'1'\r\n'a;b\r\nc';'\xce\xbb;'\r\n;plain\r\n"
    yield b"\0\x04" + b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,\"\"\n{A0EEBC999C0B4EF8BB6D6BB9BD380A12},x\n\"\",\n"
    yield b"\0\x05" + b"id,v\n1,2\n"
    yield b"\0\x0d" + b"1\tx\n"
    yield b"COPY accounts (aid, abalance) FROM STDIN WITH (FORMAT csv, DELIMITER '|', NULL '', QUOTE '\"', HEADER, FREEZE, ENCODING 'UTF8') WHERE aid > 0\0\x00aid|abalance\n1|2\n\"3\"|4\n"
    yield b"COPY public.\"Orders\" FROM STDIN (FORMAT text, DEFAULT '\\D', HEADER false)\0\x41\\D\tx\n7\t\\D\n"
    yield b"COPY t FROM STDIN CSV HEADER FORCE NOT NULL k\0\x80k,id,v\n,1,2\n"
    yield b"copy t(id) from stdin with (format 'csv', escape E'\\\\')\0\x01\"a\\\"b\"\n"


def session_seeds():
    # A cut byte (where the input is split into two writes), then client messages after login.
    yield b"\x00" + query("CREATE TABLE IF NOT EXISTS t (id int)")
    yield b"\x05" + query("BEGIN") + query("INSERT INTO t VALUES (1)")
    yield b"\x00" + parse("", "INSERT INTO t VALUES (1)") + bind("", "", []) + execute() + FLUSH
    yield b"\x10" + parse("s1", "SELECT generate_series(1, 100)") + bind("c", "s1", []) + execute("c", 2) + FLUSH
    yield b"\x00" + query("COPY t FROM STDIN") + msg(b"d", b"1\n2\n")
    yield b"\x00" + query("SELECT pg_sleep(1)")
    yield b"\x00" + query("SET search_path = nowhere; LISTEN x; SELECT pg_advisory_lock(1)")
    yield b"\x00" + query("DECLARE c CURSOR WITH HOLD FOR SELECT 1") + query("PREPARE p AS SELECT 1")
    yield b"\x03" + query("BEGIN; SELECT 1/0;") + SYNC + TERMINATE
    # Session state made where a lexical scanner does not look (issue 11): the next client must not inherit it.
    yield b"\x00" + query("SELECT set_config('work_mem', '7MB', false), set_config('fuzz.x', 'y', false)")
    yield b"\x00" + query("SET fuzz.custom = 'left'; SET statement_timeout = '1min'")
    yield b"\x00" + parse("", "SET search_path = elsewhere") + bind("", "", []) + execute() + SYNC
    yield b"\x00" + query("SELECT 1 AS x INTO TEMP leftover")
    yield b"\x00" + query("DO $$BEGIN PERFORM pg_advisory_lock(7); END$$")
    yield b"\x00" + parse("", "SELECT pg_advisory_lock(8)") + bind("", "", []) + execute() + SYNC
    yield b"\x00" + parse("", "LISTEN fuzzchan") + bind("", "", []) + execute() + SYNC
    yield b"\x00" + query("BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 1; COMMIT")
    yield b"\x00" + query("CREATE TEMP TABLE tt (x int) ON COMMIT PRESERVE ROWS")
    for c in client_streams():
        yield b"\x07" + c


def main():
    clients = list(client_streams())
    servers = list(server_streams())
    write("framing", clients + servers + [b"".join(clients)])
    write("frontend_messages", clients + [b"".join(clients)])
    write("backend_messages", servers + [b"".join(servers), b"1.5", b"-123.4500", b"2024-02-29 23:59:59.999999-07:30"])
    write("startup", list(startup_packets()))
    write("session", list(session_seeds()))
    write("auth_scram", list(scram_seeds()))
    write("auth_md5", list(md5_seeds()))
    router_sql = sql_from(["src/router/**/*.rs"])
    keys_sql = sql_from(["src/sharding/keys/**/*.rs", "src/sharding/router.rs"])
    plan_sql = sql_from(["src/sharding/scatter/**/*.rs"])
    copy_sql = sql_from(["src/sharding/copy/**/*.rs"])
    deep = ["SELECT " + "+".join(["1"] * 600), "SELECT " + "(" * 120 + "1" + ")" * 120,
            "SELECT * FROM accounts WHERE " + " OR ".join("aid = %d" % i for i in range(200))]
    write("session_effects", router_sql)
    write("classify", router_sql + deep)
    write("shard_keys", keys_sql + deep)
    write("scatter_plan", plan_sql + deep)
    write("sql_bounded", sorted(set(router_sql + keys_sql + plan_sql + copy_sql)) + deep)
    write("copy_split", list(copy_seeds()) + [s.encode() + b"\0\x00" + b"1\t2\n" for s in copy_sql if s.upper().startswith("COPY")])


if __name__ == "__main__":
    main()
