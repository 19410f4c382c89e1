"""Running one step on a batch: only the rows it sees reach it, decisions are folded in.

A step is a small class: ``__init__(params)`` loads what it needs, ``__call__(table) -> table``
adds its annotation columns and, if it decides, the two columns ``step_keep`` and
``step_drop_reason`` (``curate.stepkit``). It may also fail rows it cannot process by setting
``status`` and ``error_message``. ``StepRunner`` (the callable the executor hands to Ray) does
the rest:
- passes the step only the rows it sees: status ``success``, and still kept when the step's
  ``rows`` is ``kept``; the other rows go back in place with the step's columns null;
- checks that the step changed no column it did not declare (``modifies``), so that a stage's
  stored columns are exactly what it wrote;
- if the step raises on a batch, retries row by row and fails only the rows that raise;
- folds ``step_keep`` into the sample's ``keep`` / ``drop_reason`` (the first reason wins) and
  appends ``{step, keep, drop_reason}`` to ``decisions``, failures included, all vectorised.
Steps never import Ray, so they are unit-tested on plain Arrow tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.registry import get_step
from curate.stage_store import BOOKKEEPING_COLUMNS
from curate.stepkit import STEP_DROP_REASON, STEP_KEEP, StepInputError
from schemas.tables import DECISION_TYPE, STATUS_SUCCESS

logger = logging.getLogger(__name__)

_POSITION = "__position"


def step_failed_status(step_id: str) -> str:
    return f"failed_in_{step_id}"


def build_step(name: str, params: dict[str, Any], module: str | None = None) -> Any:
    entry = get_step(name, module)
    return entry.cls(entry.params_model.model_validate(params))


class StepRunner:
    """Callable class for Ray Data ``map_batches``: builds the step once per actor.

    ``action`` is ``call`` (the step's ``__call__``) or ``decide`` (a global step's decision with
    the ``state`` its barrier computed)."""

    def __init__(
        self,
        name: str,
        step_id: str,
        params: dict[str, Any],
        rows: str = "all",
        action: str = "call",
        state: dict | None = None,
        module: str | None = None,
    ):
        self.step_id = step_id
        self.rows = rows
        self.step = build_step(name, params, module)
        self.modifies = set(get_step(name, module).modifies)
        if action == "decide":
            self.fn: Callable[[pa.Table], pa.Table] = lambda rows_: self.step.decide(rows_, state)
        else:
            self.fn = self.step

    def __call__(self, batch: pa.Table) -> pa.Table:
        return run_on_rows(batch, self.fn, self.step_id, rows=self.rows, modifies=self.modifies)


def seen_mask(batch: pa.Table, rows: str) -> pa.ChunkedArray:
    ok = pc.equal(batch["status"], STATUS_SUCCESS)
    return ok if rows == "all" else pc.and_(ok, pc.fill_null(batch["keep"], False))


def run_on_rows(
    batch: pa.Table,
    fn: Callable[[pa.Table], pa.Table],
    step_id: str,
    *,
    rows: str = "all",
    modifies: Iterable[str] = (),
) -> pa.Table:
    """Apply ``fn`` to the rows the step sees; put the others back in place, unchanged."""
    mask = seen_mask(batch, rows)
    if batch.num_rows and pc.all(pc.fill_null(mask, False)).as_py():
        # It sees every row: nothing to put back, so nothing to sort (which would copy every
        # column); a step keeps its rows in order (``_check_untouched`` fails one that does not).
        done = _run_isolating_failures(batch, fn, step_id)
        _check_untouched(batch, done, step_id, set(modifies))
        return fold_decisions(done, step_id)
    batch = batch.append_column(_POSITION, pa.array(np.arange(batch.num_rows, dtype=np.int64)))
    todo = batch.filter(mask)
    rest = batch.filter(pc.invert(mask))
    done = _run_isolating_failures(todo, fn, step_id) if todo.num_rows else fn(todo)
    _check_untouched(todo, done, step_id, set(modifies))
    done = fold_decisions(done, step_id)
    merged = pa.concat_tables([done, rest], promote_options="default") if rest.num_rows else done
    order = pc.sort_indices(merged[_POSITION])
    return merged.take(order).drop_columns([_POSITION])


def _check_untouched(before: pa.Table, after: pa.Table, step_id: str, modifies: set[str]) -> None:
    allowed = modifies | set(BOOKKEEPING_COLUMNS)
    for name in before.column_names:
        if name in allowed or name == _POSITION:
            continue
        if name not in after.column_names:
            raise RuntimeError(f"step {step_id!r} removed column {name!r}; steps add columns, they never drop them")
        if before.num_rows == after.num_rows and not same_values(before[name], after[name]):
            raise RuntimeError(
                f"step {step_id!r} changed column {name!r}, which it does not declare in register_step(modifies=...)"
            )


def same_values(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Equal values, where NaN equals NaN (Arrow's ``equals`` says NaN != NaN)."""
    if a.equals(b):
        return True
    a, b = a.combine_chunks(), b.combine_chunks()
    if a.type != b.type or not a.is_null().equals(b.is_null()):
        return False
    while pa.types.is_fixed_size_list(a.type):
        a, b = a.flatten(), b.flatten()
    if not pa.types.is_floating(a.type):
        return False
    return bool(np.array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), equal_nan=True))


def _run_isolating_failures(table: pa.Table, fn: Callable[[pa.Table], pa.Table], step_id: str) -> pa.Table:
    try:
        return fn(table)
    except StepInputError:
        raise  # the recipe's mistake, not the rows': every row would fail alike
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


def _column(table: pa.Table, name: str, typ: pa.DataType) -> pa.Array:
    if name in table.column_names:
        return table[name].combine_chunks().cast(typ)
    return pa.nulls(table.num_rows, typ)


def _append_decisions(decisions: pa.Array, decided: np.ndarray, new: pa.StructArray) -> pa.Array:
    """Each list of ``decisions`` with the next of ``new`` appended where ``decided`` (vectorised)."""
    n = len(decisions)
    old_len = pc.fill_null(pc.list_value_length(decisions), 0).to_numpy().astype(np.int64)
    old_flat = pc.list_flatten(decisions)
    old_start = np.zeros(n, np.int64)
    np.cumsum(old_len[:-1], out=old_start[1:])
    new_len = old_len + decided
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(new_len, out=offsets[1:])
    index = np.empty(int(offsets[-1]), np.int64)
    rows_of_old = np.repeat(np.arange(n), old_len)
    within = np.arange(len(rows_of_old)) - old_start[rows_of_old]
    index[offsets[rows_of_old] + within] = np.arange(len(rows_of_old))
    decided_rows = np.flatnonzero(decided)
    index[offsets[decided_rows] + old_len[decided_rows]] = len(old_flat) + np.arange(len(decided_rows))
    values = pa.concat_arrays([old_flat.cast(DECISION_TYPE), new.cast(DECISION_TYPE)]).take(pa.array(index))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, type=pa.list_(DECISION_TYPE))


def fold_decisions(done: pa.Table, step_id: str) -> pa.Table:
    """Fold ``step_keep`` / ``step_drop_reason`` (and new failures) into keep, drop_reason, decisions."""
    n = done.num_rows
    step_keep = _column(done, STEP_KEEP, pa.bool_())
    step_reason = _column(done, STEP_DROP_REASON, pa.string())
    status = done["status"].combine_chunks()
    ok = pc.equal(status, STATUS_SUCCESS)
    # A row this step failed is decided: dropped, with its status as the reason.
    this_keep = pc.if_else(ok, step_keep, pa.scalar(False))
    this_reason = pc.if_else(ok, step_reason, status)
    decided = pc.fill_null(pc.is_valid(this_keep), False)
    dropped = pc.and_(decided, pc.invert(pc.fill_null(this_keep, True)))
    this_reason = pc.if_else(dropped, pc.coalesce(this_reason, pa.scalar("dropped")), pa.scalar(None, pa.string()))
    keep_before = pc.fill_null(done["keep"].combine_chunks(), False)
    newly_dropped = pc.and_(dropped, keep_before)
    keep = pc.and_(keep_before, pc.invert(dropped))
    prefixed = pc.binary_join_element_wise(pa.scalar(step_id), this_reason, ":")
    drop_reason = pc.if_else(newly_dropped, prefixed, done["drop_reason"].combine_chunks())
    decided_np = decided.to_numpy(zero_copy_only=False).astype(bool)
    mask = pa.array(decided_np)
    new = pa.StructArray.from_arrays(
        [
            pa.repeat(pa.scalar(step_id, pa.string()), int(decided_np.sum())),
            this_keep.filter(mask),
            this_reason.filter(mask),
        ],
        fields=list(DECISION_TYPE),
    )
    decisions = _append_decisions(done["decisions"].combine_chunks(), decided_np, new) if n else done["decisions"]
    done = done.drop_columns([c for c in (STEP_KEEP, STEP_DROP_REASON) if c in done.column_names])
    for name, values, typ in (
        ("keep", keep, pa.bool_()),
        ("drop_reason", drop_reason, pa.string()),
        ("decisions", decisions, pa.list_(DECISION_TYPE)),
    ):
        done = done.set_column(done.schema.get_field_index(name), name, pa.chunked_array([values], type=typ))
    return done


def apply_global_decision(table: pa.Table, step: Any, state: dict, step_id: str, rows: str = "all") -> pa.Table:
    """Run a global step's ``decide(table, state)`` the way ``StepRunner`` runs ``__call__``."""
    return run_on_rows(table, lambda batch: step.decide(batch, state), step_id, rows=rows)
