"""Shard counters count each distinct (status, decisions) pair once, times its rows: the same
counters as counting row by row (the reference below, the rule as the README states it)."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa

from curate.stats import shard_counters
from schemas.tables import DECISION_TYPE

STEPS = [("image_check", "all"), ("basic", "all"), ("clip_score", "kept"), ("dedup", "kept")]
REASONS = ["small", "language", "failed_decode", "failed_in_clip_score", "", None]


def _row_by_row(statuses, decisions, keep, step_rows) -> dict:
    ids = [s for s, _ in step_rows]
    steps = {s: {"in": 0, "kept": 0, "dropped": Counter(), "failed": Counter()} for s in ids}

    def failure(reason):
        return bool(reason) and reason.startswith("failed")

    for status, row in zip(statuses, decisions, strict=True):
        row = row or []
        if status != "success" and not any(d["step"] in ids and failure(d["drop_reason"]) for d in row):
            continue
        decided = {d["step"]: d for d in row}
        kept = True
        for step, seen in step_rows:
            if seen == "kept" and not kept:
                continue
            steps[step]["in"] += 1
            d = decided.get(step)
            if d is None or d["keep"]:
                steps[step]["kept"] += 1
            elif failure(d["drop_reason"]):
                steps[step]["failed"][d["drop_reason"]] += 1
                break
            else:
                steps[step]["dropped"][d["drop_reason"]] += 1
                kept = False
    return {
        "rows": len(statuses),
        "written": sum(bool(k) for k in keep),
        "status": dict(Counter(statuses)),
        "steps": {s: {**c, "dropped": dict(c["dropped"]), "failed": dict(c["failed"])} for s, c in steps.items()},
    }


def _random_table(rng: random.Random, n: int) -> pa.Table:
    statuses, decisions, keep = [], [], []
    for _ in range(n):
        statuses.append(rng.choice(["success", "success", "failed_to_read", "failed_decode", None]))
        if rng.random() < 0.1:
            decisions.append(None)
        else:
            decisions.append(
                [
                    {
                        "step": rng.choice([s for s, _ in STEPS] + ["other"]),
                        "keep": rng.random() < 0.5,
                        "drop_reason": rng.choice(REASONS),
                    }
                    for _ in range(rng.randrange(4))
                ]
            )
        keep.append(rng.choice([True, False, None]))
    return pa.table(
        {
            "status": pa.array(statuses, pa.string()),
            "decisions": pa.array(decisions, pa.list_(DECISION_TYPE)),
            "keep": pa.array(keep, pa.bool_()),
        }
    )


def test_counting_distinct_rows_equals_counting_row_by_row():
    rng = random.Random(0)
    for n in (0, 1, 7, 300, 2000):
        table = _random_table(rng, n)
        # A slice and a table of several chunks: offsets that do not start at zero.
        for t in (table, table.slice(n // 3), pa.concat_tables([table.slice(0, n // 2), table.slice(n // 2)])):
            expected = _row_by_row(t["status"].to_pylist(), t["decisions"].to_pylist(), t["keep"].to_pylist(), STEPS)
            assert shard_counters(t, STEPS) == expected
