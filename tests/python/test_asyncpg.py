"""asyncpg through the proxy, with asyncpg's default statement cache.

asyncpg prepares every query with arguments as a named statement
(__asyncpg_stmt_N__), caches the statement *and its row description* per
connection, and afterwards sends only Bind/Execute. It also runs its pool
reset query (RESET ALL, CLOSE ALL, UNLISTEN *, ...) on every release. These
tests check results value by value under that client behaviour.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random

import pytest

import _support as sp

sp.skip_module_without_proxy()

import asyncpg  # noqa: E402

CONNECT = dict(timeout=sp.CONNECT_TIMEOUT_S, command_timeout=60)


async def _proxy():
    return await asyncpg.connect(sp.PROXY_URL, **CONNECT)


async def _direct():
    return await asyncpg.connect(sp.require_direct(), **CONNECT)


def test_pool_hammer():
    n_tasks = 4000

    async def main():
        pool = await asyncpg.create_pool(
            sp.PROXY_URL, min_size=20, max_size=20, **CONNECT)
        async with pool:
            async def one(i):
                rng = random.Random(i)
                kind = i % 4
                if kind == 0:
                    assert await pool.fetchval("SELECT $1::int + 1", i) == i + 1
                elif kind == 1:
                    s = "x" * rng.randint(0, 40) + str(i)
                    row = await pool.fetchrow(
                        "SELECT $1::text AS s, length($1::text) AS n", s)
                    assert (row["s"], row["n"]) == (s, len(s))
                elif kind == 2:
                    k = rng.randint(1, 50)
                    rows = await pool.fetch(
                        "SELECT g, g * $2::bigint AS m "
                        "FROM generate_series(1, $1::int) AS g", k, i)
                    assert [tuple(r) for r in rows] == [
                        (g, g * i) for g in range(1, k + 1)]
                else:
                    # Several statements on one checked-out connection,
                    # one of them in a transaction.
                    async with pool.acquire() as conn:
                        assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
                        async with conn.transaction():
                            assert await conn.fetchval(
                                "SELECT $1::int * 3", i) == i * 3
                            assert await conn.fetchval(
                                "SELECT $1::text", str(i)) == str(i)
                return kind

            kinds = await asyncio.gather(*(one(i) for i in range(n_tasks)))
            assert sorted(kinds) == sorted(i % 4 for i in range(n_tasks))

    sp.run_async(main())


def test_prepare_and_repeated_fetch():
    async def client(idx):
        conn = await _proxy()
        try:
            mul = await conn.prepare("SELECT $1::int * $2::int AS p, $3::text AS t")
            rows = await conn.prepare(
                "SELECT g FROM generate_series($1::int, $2::int) AS g")
            assert [a.name for a in mul.get_attributes()] == ["p", "t"]
            for i in range(300):
                row = await mul.fetchrow(i, idx, f"c{idx}-{i}")
                assert tuple(row) == (i * idx, f"c{idx}-{i}")
                if i % 10 == 0:
                    got = await rows.fetch(i, i + 5)
                    assert [r["g"] for r in got] == list(range(i, i + 6))
                    # The prepared statement inside an explicit transaction.
                    async with conn.transaction():
                        assert await mul.fetchval(i, 2, "t") == i * 2
            return idx
        finally:
            await conn.close()

    async def main():
        # More clients than server connections, so statements prepared on
        # one server get executed while the client holds another.
        return await asyncio.gather(*(client(i) for i in range(12)))

    assert sp.run_async(main()) == list(range(12))


def test_transactions(table_name):
    async def main():
        direct = await _direct()
        conn = await _proxy()
        try:
            await direct.execute(
                f"CREATE TABLE {table_name} (id int PRIMARY KEY, v text)")
            insert = f"INSERT INTO {table_name} VALUES ($1, $2)"
            ids = f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM {table_name}"

            async with conn.transaction():
                await conn.execute(insert, 1, "a")
                await conn.execute(insert, 2, "b")
                assert await direct.fetchval(ids) == []
            assert await direct.fetchval(ids) == [1, 2]

            class Boom(Exception):
                pass

            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute(insert, 3, "c")
                    raise Boom()
            assert await direct.fetchval(ids) == [1, 2]

            # Savepoint: inner failure rolled back, outer work committed.
            async with conn.transaction():
                await conn.execute(insert, 4, "d")
                with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute(insert, 5, "e")
                        await conn.execute(insert, 1, "dup")
            assert await direct.fetchval(ids) == [1, 2, 4]

            # A snapshot must stay on one server connection for the whole
            # transaction: rows committed meanwhile stay invisible.
            async with conn.transaction(isolation="repeatable_read"):
                assert await conn.fetchval(ids) == [1, 2, 4]
                await direct.execute(insert, 6, "f")
                assert await conn.fetchval(ids) == [1, 2, 4]
            assert await conn.fetchval(ids) == [1, 2, 4, 6]

            # executemany: batched Bind/Execute in one transaction.
            await conn.executemany(insert, [(i, f"m{i}") for i in range(100, 200)])
            assert await direct.fetchval(
                f"SELECT count(*) FROM {table_name} WHERE id >= 100") == 100
        finally:
            await conn.close()
            await direct.close()

    sp.run_async(main())


def test_copy_records_and_copy_from_query(table_name):
    n = 10_000

    async def main():
        direct = await _direct()
        conn = await _proxy()
        try:
            await direct.execute(
                f"CREATE TABLE {table_name} (id int, name text, score float8)")
            records = [(i, f"name,{i}\n\"x\"", i / 4) for i in range(n)]
            result = await conn.copy_records_to_table(
                table_name, records=records, columns=["id", "name", "score"])
            assert result == f"COPY {n}"
            assert tuple(await direct.fetchrow(
                f"SELECT count(*), sum(id), sum(score) FROM {table_name}")) == (
                    n, n * (n - 1) // 2, sum(r[2] for r in records))

            buf = io.BytesIO()
            result = await conn.copy_from_query(
                f"SELECT id, name FROM {table_name} WHERE id >= $1 ORDER BY id",
                n // 2, output=buf, format="csv")
            assert result == f"COPY {n - n // 2}"
            parsed = list(csv.reader(io.StringIO(buf.getvalue().decode(),
                                                 newline="")))
            assert parsed == [[str(i), f"name,{i}\n\"x\""]
                              for i in range(n // 2, n)]
            # The connection is still healthy after both COPY directions.
            assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
        finally:
            await conn.close()
            await direct.close()

    sp.run_async(main())


def test_cached_select_star_after_alter_table(table_name):
    """asyncpg caches `SELECT *` with its row description. After another
    session adds a column, the next execution of the cached statement makes
    Postgres raise "cached plan must not change result type" (0A000), which
    asyncpg turns into InvalidCachedStatementError and, outside a
    transaction, handles itself by re-preparing and retrying once.

    Asserted: on every connection that had the statement cached, the query
    returns the new three-column rows either at once or after at most one
    retry by the test. Anything else (wrong rows, a row-length mismatch
    against the stale description, a second failure) fails the test: a
    proxy that re-creates the statement on another server connection after
    the ALTER must not hand asyncpg rows that contradict the description it
    cached."""
    n_conns = 4

    async def main():
        direct = await _direct()
        pool = await asyncpg.create_pool(
            sp.PROXY_URL, min_size=n_conns, max_size=n_conns, **CONNECT)
        try:
            await direct.execute(
                f"CREATE TABLE {table_name} (id int PRIMARY KEY, name text)")
            await direct.execute(
                f"INSERT INTO {table_name} VALUES (1, 'a'), (2, 'b')")
            query = f"SELECT * FROM {table_name} WHERE id >= $1 ORDER BY id"

            conns = [await pool.acquire() for _ in range(n_conns)]
            for c in conns:
                for _ in range(2):  # cached after the first call
                    rows = await c.fetch(query, 0)
                    assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]

            await direct.execute(
                f"ALTER TABLE {table_name} ADD COLUMN extra int NOT NULL DEFAULT 7")

            for c in conns:
                try:
                    rows = await c.fetch(query, 0)
                except (asyncpg.exceptions.InvalidCachedStatementError,
                        asyncpg.exceptions.FeatureNotSupportedError):
                    # The one allowed retry; a second failure propagates.
                    rows = await c.fetch(query, 0)
                assert [dict(r) for r in rows] == [
                    {"id": 1, "name": "a", "extra": 7},
                    {"id": 2, "name": "b", "extra": 7}]
            for c in conns:
                await pool.release(c)
        finally:
            await pool.close()
            await direct.close()

    sp.run_async(main())
