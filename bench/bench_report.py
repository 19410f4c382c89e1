"""Benchmark: `curate report` on runs of several sizes: how long it takes to write (a whole
process), how big the file is, and how long headless Chromium takes to load it.

The report summarises: its figures are aggregates and its galleries a few tiles per drop reason,
so its size should stay flat as the run grows. There is no tool a user would otherwise run for
this (they write their own SQL and matplotlib), so there is no baseline ratio; the figures to
read are seconds, bytes and load time per size.

    python bench/bench_report.py --samples 4000 100000
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))  # the browser test's page loader, to time the load the same way

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from bench_basic import ensure_pool, pool_bench_args  # noqa: E402
from report_browser import open_report  # noqa: E402


def main() -> int:
    args, root = pool_bench_args(__doc__, [4000, 100_000])
    rows = []
    for n in args.samples:
        pattern = ensure_pool(root, n, args.shard_size)
        run = root / f"report_run_{n}"
        if not (run / "stats.json").exists():
            shutil.rmtree(run, ignore_errors=True)
            run_measured(curate_run_command("basic", pattern, str(run)), env=BENCH_ENV)
        report = run / "report.html"
        written = run_measured([sys.executable, "-m", "curate.cli", "report", str(run)], env=BENCH_ENV)
        shown = open_report(report, f"bench-report-{n}.png")
        assert not shown["errors"], shown["errors"]
        rows.append((n, written, report.stat().st_size, shown))
    print(f"\nbench_report: curate report on pipelines/basic.yaml runs, {os.cpu_count()} CPUs")
    print(f"{'samples':>8} {'write s':>8} {'PSS MiB':>8} {'size KB':>8} {'thumbs':>7} {'Chromium load ms':>17}")
    for n, written, size, shown in rows:
        print(
            f"{n:>8} {written['seconds']:>8.1f} {written['peak_pss_mib']:>8.0f} {size / 1000:>8.0f} "
            f"{shown['images']:>7} {shown['load_ms']:>17.0f}"
        )
    print(json.dumps([{"samples": n, "bytes": size, "load_ms": s["load_ms"]} for n, _, size, s in rows]))
    print("reproduce: python bench/bench_report.py --samples " + " ".join(str(n) for n in args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
