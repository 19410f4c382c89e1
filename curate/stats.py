"""Counters: per shard, per step in / kept / dropped by reason / failed; summed across shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.tables import STATUS_SUCCESS


def _is_failure(reason: str | None) -> bool:
    return bool(reason) and reason.startswith("failed")


def shard_counters(table: pa.Table, step_rows: list[tuple[str, str]]) -> dict:
    """Counters of one finished shard, from its rows' statuses and decisions. ``step_rows`` lists
    (step id, rows) in recipe order: a step with ``rows: kept`` counts in only the rows still kept
    when it ran; every step counts no row that an earlier step failed. A row's counts depend on its
    status and decisions alone, so they are counted once per distinct pair, times its rows."""
    step_ids = [s for s, _ in step_rows]
    position = {s: i for i, s in enumerate(step_ids)}
    steps = {s: {"in": 0, "kept": 0, "dropped": Counter(), "failed": Counter()} for s in step_ids}
    statuses: Counter = Counter()
    for status, row_decisions, rows in _distinct_rows(table):
        statuses[status] += rows
        if not _read_ok(status, row_decisions, position):
            continue
        decided = {d["step"]: d for d in row_decisions or []}
        kept_so_far = True
        for step_id, seen in step_rows:
            if seen == "kept" and not kept_so_far:
                continue
            counters = steps[step_id]
            counters["in"] += rows
            d = decided.get(step_id)
            if d is None or d["keep"]:
                counters["kept"] += rows
            elif _is_failure(d["drop_reason"]):
                counters["failed"][d["drop_reason"]] += rows
                break  # a failed row reaches no later step
            else:
                counters["dropped"][d["drop_reason"]] += rows
                kept_so_far = False
    return {
        "rows": table.num_rows,
        "written": pc.sum(pc.fill_null(table["keep"], False).cast(pa.int64())).as_py() or 0,
        "status": {status: statuses[status] for status in pc.unique(table["status"]).to_pylist()},
        "steps": {s: {**c, "dropped": dict(c["dropped"]), "failed": dict(c["failed"])} for s, c in steps.items()},
    }


_NULL = "\x00null"


def _row_keys(table: pa.Table) -> pa.Array:
    """One string per row that tells apart every distinct (status, decisions) pair."""
    decisions = table["decisions"].combine_chunks()
    flat = pc.list_flatten(decisions)
    fields = [flat.field("step"), pc.cast(flat.field("keep"), pa.string()), flat.field("drop_reason")]
    parts = pc.binary_join_element_wise(*(pc.fill_null(f, _NULL) for f in fields), "\x01")
    offsets = pc.subtract(decisions.offsets, decisions.offsets[0])
    per_row = pa.ListArray.from_arrays(offsets, parts, mask=decisions.is_null())
    joined = pc.binary_join(per_row, "\x02")
    status = table["status"].combine_chunks()
    return pc.binary_join_element_wise(pc.fill_null(status, _NULL), pc.fill_null(joined, _NULL), "\x03")


def _distinct_rows(table: pa.Table) -> list[tuple[str | None, list | None, int]]:
    """(status, decisions, rows) for each distinct pair among the table's rows."""
    if not table.num_rows:
        return []
    keys = pa.table({"key": _row_keys(table), "row": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    groups = keys.group_by("key").aggregate([("row", "min"), ("row", "count")])
    first = groups["row_min"]
    statuses = table["status"].take(first).to_pylist()
    decisions = table["decisions"].take(first).to_pylist()
    return list(zip(statuses, decisions, groups["row_count"].to_pylist(), strict=True))


def _read_ok(status: str | None, row_decisions: list | None, steps: dict[str, int]) -> bool:
    """Whether a row was readable when it entered the first step (failed later or not at all)."""
    failed_by_step = any(d["step"] in steps and _is_failure(d["drop_reason"]) for d in row_decisions or [])
    return status == STATUS_SUCCESS or failed_by_step


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
