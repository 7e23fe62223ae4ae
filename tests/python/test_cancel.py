"""Cancel requests (libpq PQcancel via psycopg's conn.cancel()).

The client only knows the BackendKeyData the proxy gave it, so the proxy has
to route a cancel request to the server connection that is running *that*
client's query right now, and to nobody else.

Synchronisation is by observable server state, not by sleeping: the query to
be cancelled first takes a shared advisory lock, and the bystander query
blocks on an advisory lock held by a direct connection; pg_locks (readable
by any role) shows when each is where we want it.
"""

from __future__ import annotations

import threading
import time

import _support as sp

sp.skip_module_without_proxy()

import psycopg  # noqa: E402
from psycopg import errors  # noqa: E402

# Takes the marker lock, then sleeps. The CTE is materialised, so the lock is
# taken before pg_sleep starts; the lock dies with the statement.
SLEEPER_SQL = (
    "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(%s::bigint)) "
    "SELECT pg_sleep(30) FROM l")
# Blocks until the direct connection releases its lock, then returns a value.
BYSTANDER_SQL = (
    "WITH l AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s::bigint)) "
    "SELECT %s::text FROM l")
LOCK_STATE_SQL = (
    "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) "
    "FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 "
    "AND objid = %s::bigint::oid AND objsubid = 1")


class Background:
    """Run one statement on a connection in a thread; keep result or error."""

    def __init__(self, conn, sql, params):
        self.result = self.error = None
        self.finished_at = None
        self._thread = threading.Thread(
            target=self._run, args=(conn, sql, params), daemon=True)
        self._thread.start()

    def _run(self, conn, sql, params):
        try:
            self.result = conn.execute(sql, params).fetchall()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"statement still running after {timeout}s"

    def running(self):
        return self._thread.is_alive()


def _lock_state(direct, key):
    granted, waiting = direct.execute(LOCK_STATE_SQL, (key,)).fetchone()
    return granted, waiting


def test_cancel_hits_only_the_target_query(direct):
    sleeper_key, gate_key = sp.advisory_key(), sp.advisory_key()
    marker = sp.unique("bystander")
    target = sp.proxy_connect(autocommit=True)
    bystander = sp.proxy_connect(autocommit=True)
    try:
        # Finish connection setup so only the statements below are in flight.
        assert target.execute("SELECT %s::int", (1,)).fetchone() == (1,)
        assert bystander.execute("SELECT %s::int", (2,)).fetchone() == (2,)
        direct.execute("SELECT pg_advisory_lock(%s::bigint)", (gate_key,))

        by_job = Background(bystander, BYSTANDER_SQL, (gate_key, marker))
        sp.wait_until(lambda: _lock_state(direct, gate_key) == (1, 1), 20,
                      "the bystander query to block on the gate lock")
        sleep_job = Background(target, SLEEPER_SQL, (sleeper_key,))
        sp.wait_until(lambda: _lock_state(direct, sleeper_key) == (1, 0), 20,
                      "pg_sleep(30) to start behind the proxy")

        cancelled_at = time.monotonic()
        target.cancel()
        sleep_job.join(15)
        assert isinstance(sleep_job.error, errors.QueryCanceled), repr(sleep_job.error)
        assert sleep_job.error.sqlstate == "57014"
        assert sleep_job.finished_at - cancelled_at < 5.0

        # The bystander is still waiting: the cancel did not hit it...
        assert by_job.running()
        assert _lock_state(direct, gate_key) == (1, 1)
        # ...and completes normally once released.
        direct.execute("SELECT pg_advisory_unlock(%s::bigint)", (gate_key,))
        by_job.join(15)
        assert by_job.error is None, repr(by_job.error)
        assert by_job.result == [(marker,)]

        # Both connections are fine afterwards.
        assert target.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
        assert bystander.execute("SELECT %s::int + 1", (1,)).fetchone() == (2,)
    finally:
        direct.execute("SELECT pg_advisory_unlock_all()")
        target.close()
        bystander.close()


def test_cancel_from_idle_client_hits_nobody(direct):
    """A client with nothing running sends a cancel. Under transaction
    pooling its last server connection may by now be running someone else's
    query; that query must not be cancelled."""
    gate_key = sp.advisory_key()
    idle = sp.proxy_connect(autocommit=True)
    busy = [sp.proxy_connect(autocommit=True) for _ in range(2)]
    try:
        for c in busy:
            assert c.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        direct.execute("SELECT pg_advisory_lock(%s::bigint)", (gate_key,))
        # Use the idle client last, so a LIFO pool hands its server to a
        # busy client next.
        assert idle.execute("SELECT %s::int", (3,)).fetchone() == (3,)
        jobs = [Background(c, BYSTANDER_SQL, (gate_key, f"busy-{i}"))
                for i, c in enumerate(busy)]
        sp.wait_until(lambda: _lock_state(direct, gate_key) == (1, 2), 20,
                      "both busy clients to block on the gate lock")

        idle.cancel()
        # A wrongly routed cancel shows up as QueryCanceled in a busy job
        # below (or in this query, if forwarded to the idle client's next
        # server). A proxy that forwards it late could slip past; that can
        # only make this test pass wrongly, never fail wrongly.
        assert idle.execute("SELECT %s::int", (4,)).fetchone() == (4,)

        direct.execute("SELECT pg_advisory_unlock(%s::bigint)", (gate_key,))
        for i, job in enumerate(jobs):
            job.join(15)
            assert job.error is None, repr(job.error)
            assert job.result == [(f"busy-{i}",)]
    finally:
        direct.execute("SELECT pg_advisory_unlock_all()")
        idle.close()
        for c in busy:
            c.close()
