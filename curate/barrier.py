"""Barriers: a global step computes its state over the whole pool as of the stage before it.

``global_state(con, artifacts)`` runs SQL over the view ``staged``: every sample of every input
shard, each column from the latest stage that wrote it (DuckDB reads only the columns the query
names). A global step with ``rows: kept`` sees only the rows still kept there (its pool is what
selection left, e.g. the top fraction of the kept rows by a score only they have); with ``rows:
all`` it sees every row, failures included (DataComp's pool size counts every row). The state
is saved in the barrier's cache folder (with the artifacts it keeps, e.g. centroids), keyed by
the fingerprint of the recipe up to and including the global step, so a resumed or re-run
recipe reuses it and its decisions never change between attempts. It is saved with the version
of its inputs (every shard's stage outputs it was computed over): when a re-run re-computed rows
of a shard before the barrier (a retry), the state no longer matches them and is computed again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import duckdb

from curate.plan import Stage
from curate.run_storage import RunStorage
from curate.rundir import RunDir
from curate.stage_store import StageStore, staged_view_sql
from curate.steps import build_step

logger = logging.getLogger(__name__)


def barrier_store(run: RunDir, stage: Stage) -> StageStore:
    assert stage.barrier_cache_name is not None
    return StageStore(run.cache_storage, stage.barrier_cache_name)


def compute_state(run: RunDir, stage: Stage, stores: list[StageStore], inputs: str) -> tuple[dict, bool]:
    """The state of the global step after ``stage`` over the stage outputs of version ``inputs``,
    and whether it came from the cache."""
    op = stage.barrier
    assert op is not None
    storage = barrier_store(run, stage).storage
    if storage.exists("state.json"):
        record = storage.read_json("state.json")
        if record.get("inputs") == inputs:
            return record["state"], True
    storage.remove("artifacts")  # a killed earlier attempt's; recomputed identically
    storage.makedirs()

    def compute(artifacts: Path) -> dict:
        con = duckdb.connect()
        try:
            if not storage.is_local:  # the staged view reads the stage outputs where they are
                con.register_filesystem(storage.fs)
            view = staged_view_sql(stores)
            if op.rows == "kept":
                view = f"SELECT * FROM ({view}) WHERE status = 'success' AND keep"
            con.execute(f"CREATE VIEW staged AS {view}")
            return build_step(op.spec.name, op.spec.params).global_state(con, artifacts=artifacts)
        finally:
            con.close()

    state = _with_artifacts(storage, compute)
    logger.info("global step %s: %s", op.step_id, {k: v for k, v in state.items() if not isinstance(v, list | dict)})
    storage.write_json("state.json", {"inputs": inputs, "state": state})
    return state, False


def _with_artifacts(storage: RunStorage, compute) -> dict:
    """``compute(artifacts)`` with a local folder for the files a global step keeps (centroids, entry
    counts). Locally that is the barrier's own ``artifacts/``; for an object store a scratch folder
    whose files are uploaded there, the paths the state names rewritten to their URLs (the
    state's readers are Ray tasks on any node)."""
    if storage.is_local:
        return compute(Path(storage.path("artifacts")))
    with tempfile.TemporaryDirectory(prefix="curate-artifacts-") as scratch:
        state = compute(Path(scratch))
        storage.put_folder(scratch, "artifacts")
        return _relocated(state, scratch, storage.url("artifacts"))


def _relocated(value, old: str, new: str):
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old) :].replace(os.sep, "/")
    if isinstance(value, dict):
        return {k: _relocated(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, old, new) for v in value]
    return value


def publish_artifacts(run: RunDir, stage: Stage) -> None:
    """Copy a barrier's artifacts to ``RUN/artifacts/<step id>/``, where users and commands look."""
    cached = f"{run.cache_storage.name}/{stage.barrier_cache_name}/artifacts"
    run.storage.copy_folder(cached, f"artifacts/{stage.barrier.step_id}")
