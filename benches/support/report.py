#!/usr/bin/env python3
"""Turn the raw result files written by pgbench_compare.sh into Markdown tables.

Kept apart from the shell script because medians, ratios and "which runs failed" bookkeeping are awkward in awk,
and because the raw TSV files can be re-reported (e.g. after a run saved with OUT=dir) without re-measuring.

Usage: report.py RESULTS_DIR   (reads matrix.tsv, select1.tsv, idle.tsv; any may be missing)
"""
import csv
import os
import statistics
import sys

TARGETS = ["direct", "pgbouncer", "shardpool"]
LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "shardpool": "shardpool"}
WORKLOAD_TITLE = {
    "select-simple": "select-only (`-S`), `-M simple`",
    "select-extended": "select-only (`-S`), `-M extended`",
    "select-prepared": "select-only (`-S`), `-M prepared`",
    "tpcb-simple": "TPC-B (default script), `-M simple`",
}


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


class Cell:
    """All repeats of one (workload, clients, target)."""

    def __init__(self, rows):
        self.rows = rows
        self.ok = [r for r in rows if r["status"] == "ok"]
        self.failed = [r for r in rows if r["status"] == "fail"]
        self.na = bool(rows) and all(r["status"] == "na" for r in rows)

    def usable(self):
        # A cell counts only if every repeat succeeded: a pooler that fails one run in three is not "a bit slower".
        return bool(self.rows) and not self.failed and not self.na

    def median(self, key):
        vals = [fnum(r[key]) for r in self.ok if fnum(r[key]) is not None]
        return statistics.median(vals) if vals else None

    def tps(self):
        return self.median("tps") if self.usable() else None

    def cpu_per_xact(self):
        vals = []
        for r in self.ok:
            cpu, x = fnum(r.get("cpu_us")), fnum(r.get("xacts"))
            if cpu is not None and x:
                vals.append(cpu / x)
        return statistics.median(vals) if vals and self.usable() else None

    def status_text(self):
        if not self.rows:
            return "not run"
        if self.na:
            return "n/a (max_connections)"
        if self.failed:
            return f"fails ({len(self.failed)}/{len(self.rows)} runs)"
        return None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def fmt(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def matrix_report(rows, out):
    if not rows:
        return
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    clients = sorted({int(r["clients"]) for r in rows})
    cells = {}
    for w in workloads:
        for c in clients:
            for t in TARGETS:
                cells[w, c, t] = Cell([r for r in rows if r["workload"] == w and int(r["clients"]) == c
                                       and r["target"] == t])
    repeats = max(int(r["repeat"]) for r in rows)
    notes = []

    out.append("### Throughput summary: shardpool TPS ÷ PgBouncer TPS (medians)\n")
    out.append("| workload | " + " | ".join(f"{c} clients" for c in clients) + " |")
    out.append("|---|" + "---:|" * len(clients))
    for w in workloads:
        line = []
        for c in clients:
            sp, pgb = cells[w, c, "shardpool"], cells[w, c, "pgbouncer"]
            if sp.status_text():
                line.append("shardpool " + sp.status_text())
            elif pgb.status_text():
                line.append(f"PgBouncer {pgb.status_text()}")
            else:
                line.append(ratio(sp.tps(), pgb.tps()))
        out.append(f"| {WORKLOAD_TITLE.get(w, w)} | " + " | ".join(line) + " |")
    out.append("")

    out.append("### CPU summary: pooler CPU µs per transaction, shardpool vs PgBouncer (medians)\n")
    out.append("| workload | " + " | ".join(f"{c} clients" for c in clients) + " |")
    out.append("|---|" + "---:|" * len(clients))
    for w in workloads:
        line = []
        for c in clients:
            sp = cells[w, c, "shardpool"].cpu_per_xact()
            pgb = cells[w, c, "pgbouncer"].cpu_per_xact()
            if sp is None or pgb is None:
                line.append("—")
            else:
                line.append(f"{sp / pgb:.2f}× ({sp:.1f} vs {pgb:.1f})")
        out.append(f"| {WORKLOAD_TITLE.get(w, w)} | " + " | ".join(line) + " |")
    out.append("")

    for w in workloads:
        out.append(f"### {WORKLOAD_TITLE.get(w, w)}\n")
        out.append("| clients | target | TPS (median) | latency avg ms (median) | vs PgBouncer | vs direct "
                   "| pooler CPU µs/xact (median) |")
        out.append("|---:|---|---:|---:|---:|---:|---:|")
        for c in clients:
            direct, pgb = cells[w, c, "direct"], cells[w, c, "pgbouncer"]
            for t in TARGETS:
                cell = cells[w, c, t]
                st = cell.status_text()
                if st:
                    tps_s, lat_s = st, "—"
                    for r in cell.failed[:1]:
                        notes.append(f"{WORKLOAD_TITLE.get(w, w)}, {c} clients, {LABEL[t]}: {r['note'] or 'failed'}")
                else:
                    tps_s, lat_s = fmt(cell.tps()), fmt(cell.median("lat_ms"), 3)
                vs_pgb = "" if t in ("pgbouncer", "direct") else ratio(cell.tps(), pgb.tps())
                vs_direct = "" if t == "direct" else ratio(cell.tps(), direct.tps())
                cpu = "" if t == "direct" else fmt(cell.cpu_per_xact(), 1)
                out.append(f"| {c} | {LABEL[t]} | {tps_s} | {lat_s} | {vs_pgb} | {vs_direct} | {cpu} |")
        out.append("")
    out.append(f"Medians over {repeats} interleaved run(s) per cell. \"vs\" columns are TPS ratios; \"—\" means "
               "the other side has no number (failed or n/a). Pooler CPU = (utime+stime of the pooler process over "
               "the run) ÷ transactions.\n")
    out.append("### Pooler RSS during the matrix (MiB after the cell's runs, max over repeats)\n")
    out.append("| workload | clients | PgBouncer | shardpool |")
    out.append("|---|---:|---:|---:|")
    for w in workloads:
        for c in clients:
            vals = []
            for t in ("pgbouncer", "shardpool"):
                rss = [fnum(r.get("rss_kib")) for r in cells[w, c, t].rows if fnum(r.get("rss_kib")) is not None]
                vals.append(fmt(max(rss) / 1024, 1) if rss else "—")
            out.append(f"| {WORKLOAD_TITLE.get(w, w)} | {c} | {vals[0]} | {vals[1]} |")
    out.append("")
    if notes:
        out.append("Failures (first error of the first failed run):\n")
        for n in notes:
            out.append(f"- {n}")
        out.append("")


def select1_report(rows, out):
    if not rows:
        return
    out.append("### One client, `SELECT 1`, `-M prepared` (added latency)\n")
    out.append("| target | latency avg µs (median) | TPS (median) | added vs direct µs |")
    out.append("|---|---:|---:|---:|")
    cells = {t: Cell([r for r in rows if r["target"] == t]) for t in TARGETS}
    direct_lat = cells["direct"].median("lat_ms") if cells["direct"].usable() else None
    for t in TARGETS:
        cell = cells[t]
        if cell.status_text():
            out.append(f"| {LABEL[t]} | {cell.status_text()} | — | — |")
            continue
        lat = cell.median("lat_ms")
        added = "" if t == "direct" else (fmt((lat - direct_lat) * 1000, 1) if direct_lat is not None else "—")
        out.append(f"| {LABEL[t]} | {fmt(lat * 1000, 1)} | {fmt(cell.tps())} | {added} |")
    out.append("")


def idle_report(rows, out):
    if not rows:
        return
    out.append("### Memory with idle authenticated clients\n")
    out.append("| pooler | idle clients | RSS before MiB | RSS with clients MiB | KiB per client "
               "| RSS after they left MiB |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {LABEL.get(r['target'], r['target'])} | {r['clients']} | fails: {r['note']} | | | |")
            continue
        n = int(r["clients"])
        before, idle, after = (fnum(r[k]) for k in ("rss_before_kib", "rss_idle_kib", "rss_after_kib"))
        per = (idle - before) / n if n else None
        out.append(f"| {LABEL.get(r['target'], r['target'])} | {n:,} | {fmt(before / 1024, 1)} "
                   f"| {fmt(idle / 1024, 1)} | {fmt(per, 2)} | {fmt(after / 1024 if after else None, 1)} |")
    out.append("")


def main():
    d = sys.argv[1]
    out = []
    matrix_report(read_tsv(os.path.join(d, "matrix.tsv")), out)
    select1_report(read_tsv(os.path.join(d, "select1.tsv")), out)
    idle_report(read_tsv(os.path.join(d, "idle.tsv")), out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
