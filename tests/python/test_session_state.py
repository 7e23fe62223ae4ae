"""Session state under transaction pooling.

A client's SET must follow that client from server connection to server
connection, and must never be visible to other clients that later get the
same server connection. Directly on Postgres both hold trivially, which is
the reference behaviour the proxy has to reproduce.
"""

from __future__ import annotations

import threading

import _support as sp

sp.skip_module_without_proxy()

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

STATE_QUERY = ("SELECT current_setting('application_name'), "
               "current_setting('TimeZone'), current_setting('search_path')")


def _state(conn):
    row = conn.execute(STATE_QUERY).fetchone()
    # SHOW is a different code path (utility statement) from current_setting.
    show_tz = conn.execute("SHOW timezone").fetchone()[0]
    assert show_tz == row[1], (show_tz, row)
    return row


def _pick_zone(direct) -> str:
    default = direct.execute("SHOW timezone").fetchone()[0]
    return "Asia/Tokyo" if default != "Asia/Tokyo" else "America/Lima"


def _make_schema(direct, schema, marker):
    direct.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    direct.execute(sql.SQL("CREATE TABLE {}.marker (v text)").format(
        sql.Identifier(schema)))
    direct.execute(sql.SQL("INSERT INTO {}.marker VALUES (%s)").format(
        sql.Identifier(schema)), (marker,))


def _drop_schema(schema):
    with sp.direct_connect() as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            sql.Identifier(schema)))


def test_set_is_private_to_the_setting_client(direct):
    zone = _pick_zone(direct)
    app_name = sp.unique("app")
    schema = sp.unique("schema")
    _make_schema(direct, schema, f"marker-of-{schema}")
    n_observers = 8
    setter_iterations = 200
    baselines_taken = threading.Barrier(n_observers + 1, timeout=60)
    setter_done = threading.Event()

    def observer(idx):
        with sp.proxy_connect(autocommit=idx % 2 == 0) as conn:
            baseline = _state(conn)
            assert baseline[0] != app_name and baseline[1] != zone
            assert schema not in baseline[2]
            if not conn.autocommit:
                conn.commit()
            baselines_taken.wait()
            seen = 0
            # Keep looking for as long as the setter is active (and at least
            # a few rounds), so observations overlap its whole run.
            while not setter_done.is_set() or seen < 20:
                assert _state(conn) == baseline, (idx, seen)
                assert conn.execute("SELECT to_regclass('marker')::text"
                                    ).fetchone() == (None,)
                if not conn.autocommit:
                    conn.commit()
                seen += 1
                assert seen < 100_000, "setter never finished"
            return seen

    def setter():
        try:
            with sp.proxy_connect(autocommit=True) as conn:
                baselines_taken.wait()
                conn.execute(f"SET application_name = '{app_name}'")
                # Once over the simple query protocol too (prepare=False),
                # since proxies often track SET per protocol path.
                conn.execute(f"SET TIME ZONE '{zone}'", prepare=False)
                conn.execute(f"SET search_path = {schema}, public")
                expected = (app_name, zone, f"{schema}, public")
                for i in range(setter_iterations):
                    if i % 2:
                        with conn.transaction():
                            assert _state(conn) == expected, i
                            assert conn.execute(
                                "SELECT v FROM marker").fetchone() == (
                                    f"marker-of-{schema}",)
                    else:
                        assert _state(conn) == expected, i
                        # The zone is really in effect, not just reported.
                        hour = conn.execute(
                            "SELECT to_char(%s::timestamptz, 'HH24')",
                            ("2020-01-01 00:00:00+00",)).fetchone()[0]
                        assert hour == ("09" if zone == "Asia/Tokyo" else "19"), hour
                return setter_iterations
        except BaseException:
            # Release observers still waiting for the start signal.
            baselines_taken.abort()
            raise
        finally:
            setter_done.set()

    try:
        results = sp.run_threads(
            lambda i: setter() if i == 0 else observer(i),
            [(i,) for i in range(n_observers + 1)])
    finally:
        _drop_schema(schema)
    assert results[0] == setter_iterations
    assert all(seen >= 20 for seen in results[1:]), results


def test_set_in_rolled_back_transaction_is_discarded(direct):
    """Postgres undoes a SET when its transaction rolls back; the proxy must
    not replay it later on another server connection."""
    zone = _pick_zone(direct)
    kept = sp.unique("kept")
    with sp.PoolChurn(4), sp.proxy_connect() as conn:
        baseline_tz = conn.execute("SHOW timezone").fetchone()[0]
        conn.execute(f"SET application_name = '{kept}'")
        conn.commit()
        conn.execute("SET application_name = 'rolled_back_name'")
        conn.execute(f"SET TIME ZONE '{zone}'")
        assert conn.execute("SHOW timezone").fetchone() == (zone,)
        conn.rollback()
        for _ in range(50):
            assert conn.execute(
                "SELECT current_setting('application_name'), "
                "current_setting('TimeZone')").fetchone() == (kept, baseline_tz)
            conn.commit()


def test_reset_restores_defaults(direct):
    zone = _pick_zone(direct)
    app_name = sp.unique("app")
    with sp.PoolChurn(4), sp.proxy_connect(autocommit=True) as conn:
        baseline = _state(conn)
        conn.execute(f"SET application_name = '{app_name}'")
        conn.execute(f"SET TIME ZONE '{zone}'")
        conn.execute("SET search_path = pg_catalog")
        for _ in range(10):
            assert _state(conn) == (app_name, zone, "pg_catalog")
        conn.execute("RESET TIME ZONE")
        for _ in range(20):
            assert _state(conn) == (app_name, baseline[1], "pg_catalog")
        conn.execute("RESET ALL")
        for _ in range(20):
            assert _state(conn) == baseline


def test_startup_application_name_is_kept():
    """application_name given in the startup packet belongs to the client."""
    name = sp.unique("startup")
    with sp.PoolChurn(4), sp.proxy_connect(
            autocommit=True, application_name=name) as conn, \
            sp.proxy_connect(autocommit=True) as other:
        for _ in range(30):
            assert conn.execute(
                "SELECT current_setting('application_name')").fetchone() == (name,)
            assert other.execute(
                "SELECT current_setting('application_name')").fetchone() != (name,)


def test_set_local_does_not_leak(direct):
    """SET LOCAL ends with its transaction, on the proxy as on Postgres."""
    zone = _pick_zone(direct)
    with sp.PoolChurn(4), sp.proxy_connect() as conn:
        baseline_tz = conn.execute("SHOW timezone").fetchone()[0]
        conn.commit()
        with conn.transaction():
            conn.execute(f"SET LOCAL TIME ZONE '{zone}'")
            assert conn.execute("SHOW timezone").fetchone() == (zone,)
        conn.commit()
        for _ in range(30):
            assert conn.execute("SHOW timezone").fetchone() == (baseline_tz,)
            conn.commit()
