"""What a stage has left to do for each shard: nothing, every row, or some rows.

A shard's stage output is current when its marker's ``inputs`` are the versions the shard has now
upstream (its earlier stage outputs and the barrier states before the stage). Then the stage has
nothing to do for it, unless the marker lists rows it failed with a retryable status: those rows
(and only those) are computed again and the others kept. A shard without a current output is
computed whole. Either way, parts that an interrupted attempt of the same work left behind are
kept, and only the rows they do not hold are computed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from curate.parts import existing_parts, part_folder
from curate.readers.base import ShardRef
from curate.stage_store import StageStore


@dataclass(frozen=True)
class ShardWork:
    """One shard's work in one stage (pickled to the task that finishes it)."""

    ref: ShardRef
    inputs: tuple[str, ...]  # the upstream versions its output is computed from (into its marker)
    attempt: str  # names the parts folder: the same work after a kill finds its parts again
    rows: tuple[int, ...] | None  # the rows to compute now; None: every row
    redo: tuple[int, ...] | None  # the rows of the previous output this work replaces; None: no previous output kept
    parts: tuple[str, ...]  # parts an interrupted attempt left (names in the stage's parts): not computed again
    covered: int  # rows already had: in those parts, plus the previous output's rows that are kept
    shard_rows: int | None  # known when anything is covered
    previous_version: str | None

    @property
    def nothing_to_compute(self) -> bool:
        return self.rows is not None and not self.rows


def _attempt(inputs: list[str], previous_version: str | None) -> str:
    payload = json.dumps({"inputs": inputs, "previous": previous_version})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_shard_work(store: StageStore, ref: ShardRef, inputs: list[str], partial_ok: bool) -> ShardWork | None:
    """The stage's work on ``ref``, or None when its output is current and has no row to retry.
    ``partial_ok`` is False for a stage that runs one task per shard: it always computes whole shards."""
    marker = store.read_marker(ref.index)
    current = marker is not None and marker.get("inputs") == inputs
    if current and not marker.get("retry"):
        return None
    previous = marker if current and partial_ok else None
    attempt = _attempt(inputs, previous["version"] if previous else None)
    if not partial_ok:
        return ShardWork(ref, tuple(inputs), attempt, None, None, (), 0, None, None)
    parts, have_rows, shard_rows = existing_parts(store.parts, part_folder(ref.index, attempt))
    have = set(have_rows)
    if previous is not None:
        redo = tuple(previous["retry"])
        shard_rows = int(previous["rows"])
        rows: tuple[int, ...] | None = tuple(r for r in redo if r not in have)
        covered = shard_rows - len(redo) + len(have)
    elif parts:
        redo, rows, covered = None, tuple(r for r in range(shard_rows) if r not in have), len(have)
    else:
        redo, rows, covered = None, None, 0
    return ShardWork(
        ref,
        tuple(inputs),
        attempt,
        rows,
        redo,
        tuple(parts),
        covered,
        shard_rows,
        marker["version"] if previous else None,
    )


def inputs_digest(upstream: dict[int, list[str]]) -> str:
    """One version for a barrier's state: of every shard's upstream versions it was computed over."""
    payload = json.dumps(sorted(upstream.items()))
    return hashlib.sha256(payload.encode()).hexdigest()
