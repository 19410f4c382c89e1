"""The end-of-run summary: per-step counters and where the outputs are."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _reasons(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def print_summary(console: Console, result) -> None:
    stats, run = result.stats, result.run_dir
    table = Table(title=f"curate run: {stats.get('recipe')}", show_lines=False)
    for col in ("step", "in", "kept", "dropped", "failed", "dropped by reason", "failed by reason"):
        table.add_column(col, justify="right" if col in ("in", "kept", "dropped", "failed") else "left")
    for step_id in stats.get("steps_order", []):
        c = stats["steps"].get(step_id, {"in": 0, "kept": 0, "dropped": {}, "failed": {}})
        table.add_row(
            step_id,
            str(c["in"]),
            str(c["kept"]),
            str(sum(c["dropped"].values())),
            str(sum(c["failed"].values())),
            _reasons(c["dropped"]),
            _reasons(c["failed"]),
        )
    console.print(table)
    resumed = f" (resumed; {result.shards_done_before} shards were already done)" if result.resumed else ""
    console.print(
        f"{stats['rows']} samples in, {stats['written']} written to {stats['shards']} shards "
        f"in {result.seconds:.1f}s{resumed}\n"
        f"  final statuses: {_reasons(stats['status'])}\n"
        f"  shards:  {run.shards}/{{{0:08d}..{max(stats['shards'] - 1, 0):08d}}}.tar  (sizes.json beside them)\n"
        f'  catalog: {run.catalog}   e.g. curate query {run.root} "select step, drop_reason, count(*) '
        f'from decisions group by all"\n'
        f"  stats:   {run.stats}",
        highlight=False,
    )
