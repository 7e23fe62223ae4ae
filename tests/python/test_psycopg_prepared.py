"""psycopg 3 with prepare_threshold=0 hammering the proxy concurrently.

Every statement a client runs becomes a protocol-level named prepared
statement (_pg3_0, _pg3_1, ... numbered per client connection). Each client
first uses the statements in its own random order, so the same name means a
different SQL text on different clients. With more clients than server
connections, a client's consecutive transactions run on different servers;
a proxy that loses, mixes up or fails to re-create a client's statements on
the server it currently holds returns wrong rows or errors here.
"""

from __future__ import annotations

import asyncio
import random

import _support as sp

sp.skip_module_without_proxy()

import psycopg  # noqa: E402

N_THREADS = 40
ITERATIONS_PER_THREAD = 250
N_ASYNC_CONNS = 20
ITERATIONS_PER_ASYNC_CONN = 150


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                   for _ in range(rng.randint(1, 12)))


# (sql, make_params, expected_row). Result shapes and types differ on
# purpose: running one client's statement under another client's name
# cannot accidentally produce the right row.
CATALOGUE = [
    ("SELECT %s::int * 2",
     lambda r: (r.randint(-10**6, 10**6),),
     lambda p: (p[0] * 2,)),
    ("SELECT %s::text || '-suffix'",
     lambda r: (_word(r),),
     lambda p: (p[0] + "-suffix",)),
    ("SELECT %s::int + %s::int, %s::text",
     lambda r: (r.randint(0, 30000), r.randint(0, 30000), _word(r)),
     lambda p: (p[0] + p[1], p[2])),
    ("SELECT count(*) FROM generate_series(1, %s::int)",
     lambda r: (r.randint(1, 300),),
     lambda p: (p[0],)),
    ("SELECT %s::bigint - 1 AS n, upper(%s::text) AS u",
     lambda r: (r.randint(-2**40, 2**40), _word(r)),
     lambda p: (p[0] - 1, p[1].upper())),
    ("SELECT array_length(%s::int[], 1), %s::bool",
     lambda r: ([r.randint(0, 99) for _ in range(r.randint(1, 20))],
                r.random() < 0.5),
     lambda p: (len(p[0]), p[1])),
    ("SELECT 'constant-row'::text, 7::int",
     lambda r: None,
     lambda p: ("constant-row", 7)),
]


def _plan(seed: int, iterations: int):
    """The sequence of (sql, params, expected) one client runs."""
    rng = random.Random(seed)
    order = list(range(len(CATALOGUE)))
    rng.shuffle(order)
    # First pass in this client's own order fixes its _pg3_N numbering.
    picks = order + [rng.randrange(len(CATALOGUE)) for _ in range(iterations)]
    for idx in picks:
        sql, make, expect = CATALOGUE[idx]
        params = make(rng)
        yield sql, params, expect(params)


def _thread_client(idx: int) -> int:
    rng = random.Random(1000 + idx)
    autocommit = idx % 2 == 0
    executed = 0
    with sp.proxy_connect(autocommit=autocommit) as conn:
        if idx % 5 == 0:
            # Tiny cache: psycopg evicts and closes (Close message or
            # DEALLOCATE) statements all the time and re-prepares them.
            conn.prepared_max = 3
        in_txn = 0
        for sql, params, expected in _plan(idx, ITERATIONS_PER_THREAD):
            row = conn.execute(sql, params).fetchone()
            assert row == expected, (idx, sql, params, row, expected)
            executed += 1
            if not autocommit:
                in_txn += 1
                if in_txn >= rng.randint(1, 5):
                    in_txn = 0
                    # A rollback makes psycopg drop its whole statement cache
                    # (DEALLOCATE ALL) and prepare everything again.
                    if rng.random() < 0.1:
                        conn.rollback()
                    else:
                        conn.commit()
        if not autocommit:
            conn.commit()
    return executed


def test_prepared_statements_many_threads():
    """40 threads x (7 + 250) prepared executions, every row checked."""
    counts = sp.run_threads(_thread_client, [(i,) for i in range(N_THREADS)])
    per_thread = ITERATIONS_PER_THREAD + len(CATALOGUE)
    assert counts == [per_thread] * N_THREADS


async def _async_client(idx: int) -> int:
    autocommit = idx % 2 == 1
    executed = 0
    conn = await psycopg.AsyncConnection.connect(
        sp.PROXY_URL, prepare_threshold=0, autocommit=autocommit,
        connect_timeout=sp.CONNECT_TIMEOUT_S)
    try:
        for n, (sql, params, expected) in enumerate(
                _plan(5000 + idx, ITERATIONS_PER_ASYNC_CONN)):
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
            assert row == expected, (idx, sql, params, row, expected)
            executed += 1
            if not autocommit and n % 3 == 2:
                await conn.commit()
        if not autocommit:
            await conn.commit()
    finally:
        await conn.close()
    return executed


def test_prepared_statements_async_connections():
    """20 psycopg AsyncConnections interleaved on one event loop."""
    async def main():
        return await asyncio.gather(
            *(_async_client(i) for i in range(N_ASYNC_CONNS)))

    counts = sp.run_async(main())
    per_conn = ITERATIONS_PER_ASYNC_CONN + len(CATALOGUE)
    assert counts == [per_conn] * N_ASYNC_CONNS


def test_statement_prepared_before_a_transaction_used_inside_and_after():
    """A statement prepared in autocommit mode keeps working inside an
    explicit transaction and after it, while other clients churn the pool."""
    with sp.PoolChurn(4), sp.proxy_connect(autocommit=True) as conn:
        sql = "SELECT %s::int * %s::int"
        assert conn.execute(sql, (6, 7)).fetchone() == (42,)
        for i in range(50):
            with conn.transaction():
                assert conn.execute(sql, (i, 3)).fetchone() == (i * 3,)
                assert conn.execute(sql, (i, 5)).fetchone() == (i * 5,)
            assert conn.execute(sql, (i, 11)).fetchone() == (i * 11,)
