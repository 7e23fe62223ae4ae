"""Web-application pools through shardpool in front of a primary and replicas (one delayed): each task writes on
one pooled connection and reads on another, and must always read its write. Run by tests/consistency.rs with
SHARDPOOL_URL set; the default mode (read_proxy_writes) is what makes it pass."""

from __future__ import annotations

import asyncio
import os
import threading

import asyncpg
import psycopg

URL = os.environ["SHARDPOOL_URL"]
TABLE = os.environ.get("SHARDPOOL_TABLE", "web_py")


def test_psycopg_threads_write_on_one_connection_read_on_another():
    failures = []

    def worker(t: int) -> None:
        with psycopg.connect(URL, autocommit=True) as a, psycopg.connect(URL, autocommit=True) as b:
            for i in range(10):
                key = 1_000_000 + t * 100 + i
                writer, reader = (a, b) if i % 2 == 0 else (b, a)
                writer.execute(f"INSERT INTO {TABLE} VALUES (%s)", (key,))
                row = reader.execute(f"SELECT count(*) FROM {TABLE} WHERE id = %s", (key,)).fetchone()
                if row[0] != 1:
                    failures.append((t, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


def test_asyncpg_pool_tasks_write_then_read_on_any_connection():
    async def main() -> None:
        pool = await asyncpg.create_pool(URL, min_size=4, max_size=4, statement_cache_size=0)
        try:

            async def task(t: int) -> None:
                for i in range(10):
                    key = 2_000_000 + t * 100 + i
                    async with pool.acquire() as c:
                        await c.execute(f"INSERT INTO {TABLE} VALUES ($1)", key)
                    async with pool.acquire() as c:
                        assert await c.fetchval(f"SELECT count(*) FROM {TABLE} WHERE id = $1", key) == 1, (t, i)

            await asyncio.gather(*(task(t) for t in range(8)))
        finally:
            await pool.close()

    asyncio.run(main())


def test_asyncpg_server_settings_choose_the_mode():
    """asyncpg sends server_settings as startup parameters of their own (not in `options`). The mode's effect (reads
    that ask the primary's position) is checked by the Rust side in SHOW REPLICAS."""

    async def main() -> None:
        c = await asyncpg.connect(URL, server_settings={"shardpool.consistency": "read_all_writes"})
        try:
            # Kept by shardpool, not sent to Postgres.
            assert await c.fetchval("SELECT current_setting('shardpool.consistency', true)") is None
            for _ in range(5):
                assert await c.fetchval(f"SELECT count(*) FROM {TABLE} WHERE id < 0") == 0
        finally:
            await c.close()

    asyncio.run(main())
