"""Shared helpers for the shardpool client-library suite.

This is a plain module (not a conftest) so test modules can import it
*before* importing psycopg/asyncpg: that way the module-level skip fires
first and `pytest` on a machine without the drivers or without a proxy
reports "skipped" instead of a collection error.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid

import pytest

PROXY_URL = os.environ.get("SHARDPOOL_URL") or None
DIRECT_URL = os.environ.get("SHARDPOOL_DIRECT_URL") or None
ADMIN_URL = os.environ.get("SHARDPOOL_ADMIN_URL") or None

SKIP_REASON = (
    "SHARDPOOL_URL is not set: this suite needs a running proxy (or a plain "
    "Postgres) to talk to. The Rust integration test sets it; to run by hand "
    "export SHARDPOOL_URL and SHARDPOOL_DIRECT_URL (and SHARDPOOL_ADMIN_URL "
    "for the admin-console tests)."
)

# Every network operation is bounded so a proxy bug shows up as a failure
# with a message, not as a hung CI job. pytest-timeout (pytest.ini) is only
# the last line of defence.
CONNECT_TIMEOUT_S = 10
JOIN_TIMEOUT_S = 120


def skip_module_without_proxy() -> None:
    if not PROXY_URL:
        pytest.skip(SKIP_REASON, allow_module_level=True)


def require_direct() -> str:
    if not DIRECT_URL:
        pytest.skip("SHARDPOOL_DIRECT_URL is not set; this test verifies "
                    "through a direct connection")
    return DIRECT_URL


def unique(prefix: str) -> str:
    """A lowercase identifier no other test (or earlier run) uses."""
    return f"sp_{prefix}_{uuid.uuid4().hex[:10]}"


def advisory_key() -> int:
    # Stay below 2**31 so the key lands entirely in pg_locks.objid with
    # classid = 0, which keeps the pg_locks lookups below simple.
    return random.randint(1_000_000, 2**31 - 1)


def proxy_connect(**kwargs):
    """psycopg connection through the proxy.

    prepare_threshold=0 makes psycopg Parse every statement into a named
    protocol-level prepared statement (_pg3_N) the first time it runs,
    which is exactly the client behaviour a transaction pooler must survive.
    """
    import psycopg

    kwargs.setdefault("prepare_threshold", 0)
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return psycopg.connect(PROXY_URL, **kwargs)


def direct_connect(**kwargs):
    """psycopg connection straight to Postgres, for setup and verification."""
    import psycopg

    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return psycopg.connect(require_direct(), **kwargs)


def run_threads(target, args_list, timeout: float = JOIN_TIMEOUT_S):
    """Run target(*args) once per args tuple, each in its own thread.

    Returns the results in order; re-raises the first exception. Threads are
    daemons so a thread stuck on a broken socket cannot keep the interpreter
    (and the CI job) alive after the test has already failed.
    """
    results = [None] * len(args_list)
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def runner(idx, args):
        try:
            results[idx] = target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append((idx, exc))

    threads = [
        threading.Thread(target=runner, args=(i, a), daemon=True,
                         name=f"sp-worker-{i}")
        for i, a in enumerate(args_list)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if errors:
        idx, exc = errors[0]
        raise AssertionError(
            f"worker {idx} failed ({len(errors)} of {len(args_list)} "
            f"workers failed): {exc!r}") from exc
    assert not stuck, f"workers still running after {timeout}s: {stuck}"
    return results


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll a condition until it holds; fail with `what` if it never does.

    This waits for an observable state (e.g. a row in pg_locks), it is not a
    fixed sleep standing in for synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_async(coro, timeout: float = JOIN_TIMEOUT_S):
    """Run an asyncio test body with a hard deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class PoolChurn:
    """Background clients that keep the proxy's server connections busy.

    With an otherwise idle pool a proxy tends to hand the same server
    connection back to the same client, which would hide state leaks. These
    threads run short transactions until stopped so consecutive transactions
    of the client under test land on different server connections.
    """

    def __init__(self, n: int = 4):
        self.n = n
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.queries = 0

    def _loop(self, idx: int):
        try:
            with proxy_connect(autocommit=True) as conn:
                i = 0
                while not self._stop.is_set():
                    i += 1
                    got = conn.execute("SELECT %s::int + %s::int",
                                       (idx, i)).fetchone()[0]
                    assert got == idx + i, (got, idx, i)
                    self.queries += 1
        except BaseException as exc:  # noqa: BLE001 - checked in __exit__
            self.errors.append(exc)

    def __enter__(self):
        for i in range(self.n):
            t = threading.Thread(target=self._loop, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for t in self._threads:
            t.join(JOIN_TIMEOUT_S)
        if exc_info[0] is None:
            assert not self.errors, f"churn clients failed: {self.errors!r}"
            assert not any(t.is_alive() for t in self._threads), \
                "churn clients did not stop"
        return False
