#!/usr/bin/env python3
"""Sorts a pooler's perf samples into where its CPU goes: each syscall family (with the kernel work it does inline,
e.g. a loopback sendto delivering to the peer), being preempted on the way back from a syscall, the tokio
scheduler, shardpool's own code, the allocator, clock reads. Used for the tables in docs/benchmarks.md
("Where the cycles go").

    perf record -F 999 -g --call-graph dwarf,16384 -o sp.data -p PID -- sleep 6   # while pgbench runs
    perf script -i sp.data | benches/support/perf_categories.py [--others]

A sample is classified by its call chain: the innermost frame that is a syscall entry (or the preemption path)
decides; samples outside syscalls are classified by the innermost frames' names. --others lists the leaf functions
that fell into "other user", to check the rules.
"""

import collections
import sys

SYSCALLS = [
    ("__x64_sys_sendto", "sendto (incl. loopback delivery to the peer)"),
    ("__x64_sys_recvfrom", "recvfrom"),
    ("__x64_sys_epoll_wait", "epoll_wait (reactor park)"),
    ("__x64_sys_futex", "futex (worker park/unpark)"),
    ("__x64_sys_write", "write (eventfd wake of the reactor)"),
    ("__x64_sys_accept4", "accept"),
    ("exit_to_user_mode_loop", "preempted on syscall return (peer woken)"),
]
ALLOCATOR = ("malloc", "_int_free", "cfree", "unlink_chunk", "realloc", "tcache", "shared_v_drop",
             "promote_to_shared", "reserve_inner", "__libc_free")


def classify(frames, others):
    """frames: innermost first, kernel frames prefixed with '[k] '."""
    for f in frames:
        for key, name in SYSCALLS:
            if key in f:
                return name
    if frames and frames[0].startswith("[k]"):
        return "kernel, other (irq, timers)"
    leaf = frames[0] if frames else ""
    if any(a in f for f in frames[:6] for a in ALLOCATOR):
        return "allocator (malloc/free, Bytes sharing)"
    if "clock_gettime" in leaf or "Timespec>::now" in leaf:
        return "clock_gettime (vDSO)"
    for f in frames[:8]:
        if "shardpool::" in f:
            return "shardpool code (user)"
        if "tokio::" in f or "mio::" in f or "parking_lot" in f:
            return "tokio scheduler/reactor (user)"
    others[leaf] += 1
    return "other user (libc, std; all of PgBouncer's user time)"


def samples(lines):
    cur = []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
            continue
        if cur:
            yield cur
        cur = []
    if cur:
        yield cur


def main():
    counts = collections.Counter()
    others = collections.Counter()
    total = 0
    for sample in samples(sys.stdin):
        frames = []
        for line in sample[1:]:
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            name, _, module = parts[1].rpartition(" (")
            name = name or parts[1]
            frames.append(("[k] " if "kernel.kallsyms" in module else "") + name)
        counts[classify(frames, others)] += 1
        total += 1
    for name, n in counts.most_common():
        print(f"{n * 100 / total:5.1f}%  {name}")
    print(f"({total} samples)")
    if "--others" in sys.argv:
        for leaf, n in others.most_common(15):
            print(f"    {n:6d}  {leaf[:150]}")


if __name__ == "__main__":
    main()
