"""The end-of-run summary: per-step counters, drop and failure reasons, where the outputs are."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _step_counters(stats: dict, step_id: str) -> dict:
    return stats["steps"].get(step_id, {"in": 0, "kept": 0, "dropped": {}, "failed": {}})


def print_summary(console: Console, result) -> None:
    stats, run = result.stats, result.run_dir
    steps = Table(title=f"curate run: {stats.get('recipe')}")
    for col in ("step", "in", "kept", "dropped", "failed"):
        steps.add_column(col, justify="left" if col == "step" else "right")
    reasons = Table(title="why samples were dropped or failed")
    for col in ("step", "reason", "samples"):
        reasons.add_column(col, justify="right" if col == "samples" else "left")
    read_failures = {k: v for k, v in stats["status"].items() if k in ("failed_to_download", "failed_to_resize")}
    for status, count in read_failures.items():
        reasons.add_row("read", status, str(count))
    for step_id in stats.get("steps_order", []):
        c = _step_counters(stats, step_id)
        steps.add_row(
            step_id, str(c["in"]), str(c["kept"]), str(sum(c["dropped"].values())), str(sum(c["failed"].values()))
        )
        for reason, count in sorted({**c["failed"], **c["dropped"]}.items(), key=lambda kv: -kv[1]):
            reasons.add_row(step_id, reason, str(count))
    console.print(steps)
    if reasons.row_count:
        console.print(reasons)
    for stage in getattr(result, "stages", []) or []:
        barrier = stage.get("barrier")
        state = ""
        if barrier is not None:
            how = "reused from cache" if barrier["reused"] else "computed"
            state = f"; barrier {barrier['step']}: state {how} in {barrier['seconds']:.1f}s"
        console.print(
            f"stage {stage['stage']}: {stage['computed']} shard(s) computed, {stage['reused']} reused from cache "
            f"({stage['cache']}) in {stage['seconds']:.1f}s{state}",
            highlight=False,
            soft_wrap=True,
        )
    resumed = f" (resumed; {result.shards_done_before} shards were already done)" if result.resumed else ""
    last = max(stats["shards"] - 1, 0)
    console.print(
        f"{stats['rows']} samples in, {stats['written']} written to {stats['shards']} shards "
        f"in {result.seconds:.1f}s{resumed}\n"
        f"  shards:  {run.storage.url('shards')}/{{{0:08d}..{last:08d}}}.tar  (sizes.json beside them)\n"
        f"  catalog: {run.storage.url('catalog.duckdb')}  (views: samples, sidecars, decisions, kept, shards, steps)\n"
        f"  stats:   {run.storage.url('stats.json')}",
        highlight=False,
        soft_wrap=True,
    )
    if "splits" in stats:
        folder = run.storage.url(stats["splits"]["folder"])
        sets = ", ".join(f"{value}: {n}" for value, n in stats["splits"]["samples"].items())
        console.print(
            f"  splits:  {folder}/<value>/{{{0:08d}..{last:08d}}}.tar  (samples per set: {sets})",
            highlight=False,
            soft_wrap=True,
        )
