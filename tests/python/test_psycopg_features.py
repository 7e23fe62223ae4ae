"""psycopg 3 (prepare_threshold=0) feature coverage through the proxy:
transactions, executemany/pipelines, COPY both ways, big results, notices
and errors in the middle of a session."""

from __future__ import annotations

import hashlib

import pytest

import _support as sp

sp.skip_module_without_proxy()

import psycopg  # noqa: E402
from psycopg import errors  # noqa: E402


def _count_and_sum(direct, table):
    return direct.execute(
        f"SELECT count(*), coalesce(sum(id), 0) FROM {table}").fetchone()


def test_commit_and_rollback_visibility(direct, table_name):
    direct.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    with sp.PoolChurn(3), sp.proxy_connect() as conn:
        conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (1, "one"))
        conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (2, "two"))
        # Uncommitted rows are visible to the transaction itself...
        assert conn.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (2,)
        # ...but not to anyone else yet.
        assert _count_and_sum(direct, table_name) == (0, 0)
        conn.commit()
        assert _count_and_sum(direct, table_name) == (2, 3)

        conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (10, "ten"))
        conn.execute(f"UPDATE {table_name} SET v = 'changed' WHERE id = %s", (1,))
        conn.rollback()
        assert _count_and_sum(direct, table_name) == (2, 3)
        assert conn.execute(
            f"SELECT v FROM {table_name} WHERE id = %s", (1,)).fetchone() == ("one",)
        conn.commit()

        # The context-manager form, including a savepoint that rolls back.
        with conn.transaction():
            conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (3, "three"))
            with pytest.raises(errors.UniqueViolation):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (4, "four"))
                    conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (1, "dup"))
        assert _count_and_sum(direct, table_name) == (3, 6)
        assert direct.execute(
            f"SELECT array_agg(v ORDER BY id) FROM {table_name}").fetchone() == (
                ["one", "two", "three"],)


def test_executemany_and_pipeline(direct, table_name):
    direct.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
    rows = [(i, f"v{i}") for i in range(1, 1001)]
    with sp.proxy_connect(autocommit=True) as conn:
        cur = conn.cursor()
        # psycopg runs executemany in pipeline mode: many Bind/Execute
        # messages with a single Sync.
        cur.executemany(f"INSERT INTO {table_name} VALUES (%s, %s)", rows)
        assert _count_and_sum(direct, table_name) == (1000, 500500)

        cur.executemany(
            f"UPDATE {table_name} SET v = v || '!' WHERE id = %s RETURNING id, v",
            [(i,) for i in (5, 50, 500)], returning=True)
        returned = []
        while True:
            returned.append(cur.fetchone())
            if not cur.nextset():
                break
        assert returned == [(5, "v5!"), (50, "v50!"), (500, "v500!")]

        # Explicit pipeline with a failure in the middle: in a transaction
        # everything is rolled back and the connection stays usable.
        with pytest.raises(errors.DivisionByZero):
            with conn.transaction(), conn.pipeline():
                conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (2001, "a"))
                conn.execute("SELECT 1 / %s::int", (0,))
                conn.execute(f"INSERT INTO {table_name} VALUES (%s, %s)", (2002, "b"))
        assert _count_and_sum(direct, table_name) == (1000, 500500)

        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int + 1", (41,))
            c2 = conn.execute(f"SELECT count(*) FROM {table_name}")
        assert c1.fetchone() == (42,)
        assert c2.fetchone() == (1000,)


def test_copy_in_and_out(direct, table_name):
    n = 10_000
    direct.execute(f"CREATE TABLE {table_name} (id int, name text, score float8)")
    expected = [(i, f"name-{i}\t\\ \"q\"", i / 8) for i in range(n)]
    with sp.proxy_connect() as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table_name} (id, name, score) FROM STDIN") as copy:
                for row in expected:
                    copy.write_row(row)
            assert cur.rowcount == n
        conn.commit()
        assert _count_and_sum(direct, table_name) == (n, n * (n - 1) // 2)

        got = []
        with conn.cursor() as cur:
            with cur.copy(
                    f"COPY (SELECT id, name, score FROM {table_name} ORDER BY id) "
                    "TO STDOUT") as copy:
                copy.set_types(["int4", "text", "float8"])
                for row in copy.rows():
                    got.append(row)
        conn.commit()
        assert got == expected
        # The session is in a sane state after COPY.
        assert conn.execute("SELECT %s::int * 2", (21,)).fetchone() == (42,)


def test_large_result(direct):
    n = 200_000
    query = "SELECT i, md5(i::text) FROM generate_series(1, %s::int) AS i"
    with sp.proxy_connect(autocommit=True) as conn:
        # Buffered: the whole result through the proxy in one go.
        rows = conn.execute(query, (n,)).fetchall()
        assert len(rows) == n
        assert sum(r[0] for r in rows) == n * (n + 1) // 2
        for i in (1, 777, 123_456, n):
            assert rows[i - 1] == (i, hashlib.md5(str(i).encode()).hexdigest())

        # Streamed row by row (single-row mode, no server-side cursor).
        total = count = 0
        with conn.cursor() as cur:
            for i, digest in cur.stream(query, (n,)):
                count += 1
                total += i
                if i % 50_000 == 0:
                    assert digest == hashlib.md5(str(i).encode()).hexdigest()
        assert (count, total) == (n, n * (n + 1) // 2)
        assert conn.execute("SELECT %s::text", ("after",)).fetchone() == ("after",)


def test_notices_reach_the_client():
    seen = []
    with sp.proxy_connect(autocommit=True) as conn:
        conn.add_notice_handler(
            lambda diag: seen.append((diag.severity_nonlocalized,
                                      diag.message_primary)))
        conn.execute(
            "DO $$ BEGIN "
            "RAISE NOTICE 'first notice %', 41 + 1; "
            "RAISE WARNING 'then a warning'; "
            "RAISE NOTICE 'last notice'; "
            "END $$")
        assert seen == [("NOTICE", "first notice 42"),
                        ("WARNING", "then a warning"),
                        ("NOTICE", "last notice")]
        # Inside a transaction too, interleaved with a normal result.
        seen.clear()
        with conn.transaction():
            conn.execute("DO $$ BEGIN RAISE NOTICE 'in txn'; END $$")
            assert conn.execute("SELECT %s::int", (5,)).fetchone() == (5,)
        assert seen == [("NOTICE", "in txn")]


def test_errors_report_sqlstate_and_connection_survives(direct, table_name):
    direct.execute(f"CREATE TABLE {table_name} (id int PRIMARY KEY)")
    with sp.proxy_connect() as conn:
        conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (1,))
        with pytest.raises(errors.UniqueViolation) as exc:
            conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (1,))
        assert exc.value.sqlstate == "23505"
        assert exc.value.diag.constraint_name == f"{table_name}_pkey"
        # The transaction is aborted until the client rolls back.
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert _count_and_sum(direct, table_name) == (0, 0)
        conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (2,))
        conn.commit()
        assert _count_and_sum(direct, table_name) == (1, 2)

    with sp.proxy_connect(autocommit=True) as conn:
        div = "SELECT 10 / %s::int"
        assert conn.execute(div, (5,)).fetchone() == (2,)
        with pytest.raises(errors.DivisionByZero) as exc:
            conn.execute(div, (0,))
        assert exc.value.sqlstate == "22012"
        # The same prepared statement still works after the error.
        assert conn.execute(div, (2,)).fetchone() == (5,)

        # Errors while parsing a named statement must not leave a broken
        # half-registered statement behind.
        with pytest.raises(errors.SyntaxError) as exc:
            conn.execute("SELEC %s::int", (1,))
        assert exc.value.sqlstate == "42601"
        with pytest.raises(errors.UndefinedTable) as exc:
            conn.execute("SELECT * FROM sp_no_such_table_anywhere WHERE 1 = %s", (1,))
        assert exc.value.sqlstate == "42P01"
        assert conn.execute(div, (10,)).fetchone() == (1,)
        assert conn.execute("SELECT %s::text || 'k'", ("o",)).fetchone() == ("ok",)
