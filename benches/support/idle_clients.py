#!/usr/bin/env python3
"""Open N PostgreSQL connections that log in and then sit idle.

Used by pgbench_compare.sh to measure a pooler's memory per idle client. Each connection sends a v3
StartupMessage, reads until the first ReadyForQuery (so authentication and the pooler's login work are complete),
then does nothing. Raw sockets rather than a driver: the benchmark machine needs no extra packages, and a driver
would add its own startup parameters and round trips.

Prints "READY <n>" on stdout once all logins finished (or "FAILED <msg>" and exits 1), then holds the connections
until SIGTERM/SIGINT and closes them with a Terminate message.
"""
import argparse
import asyncio
import signal
import struct
import sys


def startup_message(user: str, database: str) -> bytes:
    # application_name makes the clients easy to tell apart in SHOW CLIENTS / pg_stat_activity.
    params = [("user", user), ("database", database), ("application_name", "idle_clients")]
    body = struct.pack("!i", 196608)  # protocol 3.0
    for key, value in params:
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def login(host, port, startup, sem, timeout):
    async with sem:  # bound the connects in flight so the pooler's listen backlog never overflows
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(startup)
        await writer.drain()
        while True:
            header = await asyncio.wait_for(reader.readexactly(5), timeout)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            payload = await reader.readexactly(length - 4)
            if kind == b"E":
                fields = [f[1:].decode(errors="replace") for f in payload.split(b"\0") if f[:1] in (b"C", b"M")]
                raise RuntimeError("server error: " + " ".join(fields))
            if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                raise RuntimeError("server asked for a password; the benchmark expects trust auth")
            if kind == b"Z":
                return writer


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", default="bench")
    ap.add_argument("--database", default="bench")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    # Handlers first, so a stop request that arrives while logins are still going is not lost.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    startup = startup_message(args.user, args.database)
    sem = asyncio.Semaphore(args.concurrency)
    results = await asyncio.gather(
        *(login(args.host, args.port, startup, sem, args.timeout) for _ in range(args.clients)),
        return_exceptions=True,
    )
    writers = [r for r in results if isinstance(r, asyncio.StreamWriter)]
    errors = [r for r in results if not isinstance(r, asyncio.StreamWriter)]
    if errors:
        print(f"FAILED {len(errors)} of {args.clients} logins; first: {errors[0]!r}", flush=True)
        for w in writers:
            w.close()
        return 1
    print(f"READY {len(writers)}", flush=True)

    # Hold the idle connections until the harness has read the pooler's RSS and says stop.
    await stop.wait()
    terminate = b"X" + struct.pack("!i", 4)
    for w in writers:
        try:
            w.write(terminate)
            w.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
