"""Global steps: decisions that need the whole pool's annotations first (DataComp's fraction
filters, k-means-based selection).

When a recipe has global steps, the streaming pass stages each finished shard as
``_stage/NNNNNNNN.parquet`` (every column, bytes included) instead of writing it. Once every
shard is staged, each global step computes its state with SQL over the view ``staged`` (DuckDB
reads only the columns it needs), the states are saved to ``global_state.json``, and then each
staged shard gets the global decisions and is written like any other. A resumed run reuses the
saved states, so decisions never change between attempts; the stage is removed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate.registry import get_step
from curate.rundir import RunDir, atomic_write_text
from curate.steps import apply_global_decision, build_step
from curate.writer import finalize_table
from schemas.recipe import Recipe, StepSpec

logger = logging.getLogger(__name__)


def quote_identifier(name: str) -> str:
    """A column name as a DuckDB identifier for SQL over ``staged`` (any characters, quotes escaped)."""
    return '"' + name.replace('"', '""') + '"'


def global_steps(recipe: Recipe) -> list[StepSpec]:
    return [s for s in recipe.steps if get_step(s.name).global_decision]


def streaming_steps(recipe: Recipe) -> list[StepSpec]:
    """Steps that run per batch in the streaming pass: every per-batch step, plus the global steps
    whose class sets ``annotates_in_stream`` (their ``__call__`` annotates in parallel workers, e.g.
    MetaCLIP's entry matching, so that the global phase only counts and decides)."""
    return [
        s
        for s in recipe.steps
        if not get_step(s.name).global_decision or getattr(get_step(s.name).cls, "annotates_in_stream", False)
    ]


def stage_dir(run: RunDir) -> Path:
    return run.root / "_stage"


def stage_path(run: RunDir, shard_index: int) -> Path:
    return stage_dir(run) / f"{shard_index:08d}.parquet"


def write_stage(run: RunDir, shard_index: int, table: pa.Table) -> None:
    path = stage_path(run, shard_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Uncompressed: the stage is read back once, and is mostly image bytes.
    pq.write_table(table, tmp, compression="none")
    os.replace(tmp, path)


def is_staged(run: RunDir, shard_index: int) -> bool:
    return stage_path(run, shard_index).exists()


def compute_global_states(run: RunDir, recipe: Recipe) -> dict[str, dict]:
    """Each global step's state, computed once over all staged shards and then reused."""
    saved = run.root / "global_state.json"
    if saved.exists():
        return json.loads(saved.read_text())
    con = duckdb.connect()
    try:
        pattern = str(stage_dir(run) / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW staged AS SELECT * FROM read_parquet('{pattern}', union_by_name = true)")
        states = {}
        for spec in global_steps(recipe):
            step = build_step(spec.name, spec.params)
            states[spec.step_id] = step.global_state(con, artifacts=run.root / "artifacts" / spec.step_id)
            logger.info(
                "global step %s: %s",
                spec.step_id,
                {k: v for k, v in states[spec.step_id].items() if not isinstance(v, list)},
            )
    finally:
        con.close()
    atomic_write_text(saved, json.dumps(states, indent=2))
    return states


def finish_staged_shards(run: RunDir, recipe: Recipe, shard_indices: list[int], states: dict[str, dict]) -> None:
    specs = global_steps(recipe)
    steps = [(spec.step_id, build_step(spec.name, spec.params)) for spec in specs]
    step_ids = [s.step_id for s in recipe.steps]
    for index in shard_indices:
        if run.is_done(index):
            continue
        table = pq.read_table(stage_path(run, index))
        for step_id, step in steps:
            table = apply_global_decision(table, step, states[step_id], step_id)
        counters = finalize_table(run, index, table, recipe.output, step_ids)
        logger.info("shard %s done: %d of %d rows written", counters["shard"], counters["written"], counters["rows"])


def remove_stage(run: RunDir) -> None:
    shutil.rmtree(stage_dir(run), ignore_errors=True)
