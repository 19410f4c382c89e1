"""Running one step on a batch: only successful rows reach the step, decisions are folded in.

A step is a small class: ``__init__(params)`` loads what it needs, ``__call__(table) -> table``
adds its annotation columns and, if it decides, the two columns ``step_keep`` and
``step_drop_reason``. It may also fail rows it cannot process by setting ``status`` and
``error_message``. ``StepRunner`` (the callable the runner hands to Ray) does the rest:
- passes the step only rows whose ``status`` is ``success`` and puts the failed ones back in
  place, so steps never special-case failures;
- if the step raises on a batch, retries row by row and fails only the rows that raise;
- folds ``step_keep`` into the sample's ``keep`` / ``drop_reason`` (the first reason wins) and
  appends ``{step, keep, drop_reason}`` to ``decisions``, failures included.
Steps never import Ray, so they are unit-tested on plain Arrow tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.registry import get_step
from schemas.tables import DECISION_TYPE, STATUS_SUCCESS

logger = logging.getLogger(__name__)

STEP_KEEP = "step_keep"
STEP_DROP_REASON = "step_drop_reason"
_POSITION = "__position"


def step_failed_status(step_id: str) -> str:
    return f"failed_in_{step_id}"


def build_step(name: str, params: dict[str, Any]) -> Any:
    entry = get_step(name)
    return entry.cls(entry.params_model.model_validate(params))


class StepRunner:
    """Callable class for Ray Data ``map_batches``: builds the step once per actor."""

    def __init__(self, name: str, step_id: str, params: dict[str, Any]):
        self.step_id = step_id
        self.step = build_step(name, params)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_on_successful_rows(batch, self.step, self.step_id)


def apply_global_decision(table: pa.Table, step: Any, state: dict, step_id: str) -> pa.Table:
    """Run a global step's ``decide(table, state)`` the way ``StepRunner`` runs ``__call__``."""
    return run_on_successful_rows(table, lambda rows: step.decide(rows, state), step_id)


def run_on_successful_rows(batch: pa.Table, fn: Callable[[pa.Table], pa.Table], step_id: str) -> pa.Table:
    """Apply ``fn`` to the rows whose status is success; put failed rows back in place."""
    batch = batch.append_column(_POSITION, pa.array(np.arange(batch.num_rows, dtype=np.int64)))
    ok_mask = pc.equal(batch["status"], STATUS_SUCCESS)
    todo = batch.filter(ok_mask)
    rest = batch.filter(pc.invert(ok_mask))
    done = _run_isolating_failures(todo, fn, step_id) if todo.num_rows else fn(todo)
    done = fold_decisions(done, step_id)
    merged = pa.concat_tables([done, rest], promote_options="default") if rest.num_rows else done
    order = pc.sort_indices(merged[_POSITION])
    return merged.take(order).drop_columns([_POSITION])


def _run_isolating_failures(table: pa.Table, fn: Callable[[pa.Table], pa.Table], step_id: str) -> pa.Table:
    try:
        return fn(table)
    except Exception as exc:  # noqa: BLE001 - any failure is isolated to the rows causing it
        logger.warning("step %s failed on a batch of %d (%s); retrying row by row", step_id, table.num_rows, exc)
    pieces = []
    for i in range(table.num_rows):
        row = table.slice(i, 1)
        try:
            pieces.append(fn(row))
        except Exception as exc:  # noqa: BLE001
            failed = row.set_column(
                row.schema.get_field_index("status"), "status", pa.array([step_failed_status(step_id)])
            ).set_column(
                row.schema.get_field_index("error_message"), "error_message", pa.array([f"{type(exc).__name__}: {exc}"])
            )
            pieces.append(failed)
    return pa.concat_tables(pieces, promote_options="default")


def fold_decisions(done: pa.Table, step_id: str) -> pa.Table:
    """Fold ``step_keep`` / ``step_drop_reason`` (and new failures) into keep, drop_reason, decisions."""
    n = done.num_rows
    names = done.column_names
    step_keep = done[STEP_KEEP].to_pylist() if STEP_KEEP in names else [None] * n
    step_reason = done[STEP_DROP_REASON].to_pylist() if STEP_DROP_REASON in names else [None] * n
    status = done["status"].to_pylist()
    keep = done["keep"].to_pylist()
    reasons = done["drop_reason"].to_pylist()
    decisions = done["decisions"].to_pylist()
    for i in range(n):
        this_keep, this_reason = step_keep[i], step_reason[i]
        if status[i] != STATUS_SUCCESS:
            this_keep, this_reason = False, status[i]
        if this_keep is None:
            continue  # an annotate-only step, or no decision for this row
        if not this_keep:
            this_reason = this_reason or "dropped"
            if keep[i]:
                keep[i], reasons[i] = False, f"{step_id}:{this_reason}"
        decisions[i] = [
            *(decisions[i] or []),
            {"step": step_id, "keep": bool(this_keep), "drop_reason": None if this_keep else this_reason},
        ]
    done = done.drop_columns([c for c in (STEP_KEEP, STEP_DROP_REASON) if c in names])
    for name, values, typ in (
        ("keep", keep, pa.bool_()),
        ("drop_reason", reasons, pa.string()),
        ("decisions", decisions, pa.list_(DECISION_TYPE)),
    ):
        done = done.set_column(done.schema.get_field_index(name), name, pa.array(values, type=typ))
    return done
