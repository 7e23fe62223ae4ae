"""The proxy's admin console (SHOW POOLS, SHOW VERSION).

The console speaks the simple query protocol only. psycopg uses the simple
protocol for a query with no parameters when statement preparation is off
(prepare_threshold=None) and the result format is text; prepare=False on
each execute makes that explicit, so no Parse/Bind ever reaches the console.
"""

from __future__ import annotations

import pytest

import _support as sp

sp.skip_module_without_proxy()

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

pytestmark = pytest.mark.skipif(
    not sp.ADMIN_URL,
    reason="SHARDPOOL_ADMIN_URL is not set: the admin console exists only "
           "on the proxy")

POOL_COLUMNS = {"database", "user", "cl_active", "cl_waiting", "sv_active",
                "sv_idle", "sv_used", "maxwait", "pool_mode"}
COUNT_COLUMNS = ["cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                 "maxwait"]


def _admin():
    return psycopg.connect(sp.ADMIN_URL, autocommit=True, prepare_threshold=None,
                           connect_timeout=sp.CONNECT_TIMEOUT_S)


def _show(conn, what):
    cur = conn.execute(f"SHOW {what}", prepare=False)
    cols = [d.name for d in cur.description]
    return cols, [dict(zip(cols, row)) for row in cur.fetchall()]


def _as_count(value):
    # Counters may come back typed (int8) or as text; either way they must be
    # whole non-negative numbers.
    number = int(str(value))
    assert number >= 0, value
    return number


def test_show_pools():
    target = conninfo_to_dict(sp.PROXY_URL)
    # Keep a transaction open through the proxy so this pool certainly exists
    # and has a client linked to a server connection while we look.
    with sp.proxy_connect() as client, _admin() as admin:
        assert client.execute("SELECT %s::int", (1,)).fetchone() == (1,)
        cols, rows = _show(admin, "POOLS")
        assert POOL_COLUMNS <= set(cols), cols
        ours = [r for r in rows
                if r["database"] == target["dbname"] and r["user"] == target["user"]]
        assert len(ours) == 1, rows
        pool = ours[0]
        assert pool["pool_mode"] == "transaction", pool
        counts = {c: _as_count(pool[c]) for c in COUNT_COLUMNS}
        assert counts["cl_active"] >= 1, pool
        assert counts["sv_active"] >= 1, pool
        client.commit()


def test_show_version():
    with _admin() as admin:
        cols, rows = _show(admin, "VERSION")
        assert len(rows) == 1, rows
        assert len(cols) == 1, cols
        version = rows[0][cols[0]]
        assert isinstance(version, str) and version.strip(), version
