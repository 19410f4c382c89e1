"""Counters: per shard, per step in / kept / dropped by reason / failed; summed across shards."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from schemas.tables import STATUS_SUCCESS


def _is_failure(reason: str | None) -> bool:
    return bool(reason) and reason.startswith("failed")


def shard_counters(table: pa.Table, step_rows: list[tuple[str, str]]) -> dict:
    """Counters of one finished shard, from its rows' statuses and decisions. ``step_rows`` lists
    (step id, rows) in recipe order: a step with ``rows: kept`` counts in only the rows still kept
    when it ran; every step counts no row that an earlier step failed."""
    step_ids = [s for s, _ in step_rows]
    statuses = table["status"].to_pylist()
    decisions = table["decisions"].to_pylist()
    keep = table["keep"].to_pylist()
    position = {s: i for i, s in enumerate(step_ids)}
    steps = {s: {"in": 0, "kept": 0, "dropped": Counter(), "failed": Counter()} for s in step_ids}
    for row_decisions, reader_ok in zip(decisions, _read_ok(statuses, decisions, position), strict=True):
        if not reader_ok:
            continue
        decided = {d["step"]: d for d in row_decisions or []}
        kept_so_far = True
        for step_id, rows in step_rows:
            if rows == "kept" and not kept_so_far:
                continue
            counters = steps[step_id]
            counters["in"] += 1
            d = decided.get(step_id)
            if d is None or d["keep"]:
                counters["kept"] += 1
            elif _is_failure(d["drop_reason"]):
                counters["failed"][d["drop_reason"]] += 1
                break  # a failed row reaches no later step
            else:
                counters["dropped"][d["drop_reason"]] += 1
                kept_so_far = False
    return {
        "rows": table.num_rows,
        "written": sum(bool(k) for k in keep),
        "status": dict(Counter(statuses)),
        "steps": {s: {**c, "dropped": dict(c["dropped"]), "failed": dict(c["failed"])} for s, c in steps.items()},
    }


def _read_ok(statuses: list[str], decisions: list, steps: dict[str, int]) -> list[bool]:
    """Whether a row was readable when it entered the first step (failed later or not at all)."""
    out = []
    for status, row_decisions in zip(statuses, decisions, strict=True):
        failed_by_step = any(d["step"] in steps and _is_failure(d["drop_reason"]) for d in row_decisions or [])
        out.append(status == STATUS_SUCCESS or failed_by_step)
    return out


def merge_counters(items: list[dict]) -> dict:
    total: dict = {"shards": len(items), "rows": 0, "written": 0, "status": Counter(), "steps": {}}
    for item in items:
        total["rows"] += item["rows"]
        total["written"] += item["written"]
        total["status"].update(item["status"])
        for step_id, c in item["steps"].items():
            agg = total["steps"].setdefault(step_id, {"in": 0, "kept": 0, "dropped": Counter(), "failed": Counter()})
            agg["in"] += c["in"]
            agg["kept"] += c["kept"]
            agg["dropped"].update(c["dropped"])
            agg["failed"].update(c["failed"])
    total["status"] = dict(sorted(total["status"].items()))
    for agg in total["steps"].values():
        agg["dropped"] = dict(sorted(agg["dropped"].items()))
        agg["failed"] = dict(sorted(agg["failed"].items()))
    return total
