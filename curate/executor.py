"""Running one stage of a plan; shard outputs are written by Ray tasks, never by the driver.

A stage with per-batch steps is one Ray Data pass:

    from_items(pending shards) -> read (source shard, or earlier stages' outputs + image bytes by
    range) -> one map_batches actor pool per operation -> write_parts

The driver only counts rows per shard from the parts' summaries; once a shard's rows have all
arrived it starts a Ray task that assembles them, writes the stage's output for that shard and its
marker, and, in the last stage, the final shard through the sink.

A stage that only applies global decisions (or only reads, when a recipe starts with a global
step) has no model to keep warm in an actor pool: it runs as one Ray task per shard that reads,
decides, writes and commits, with no rows moving through Ray Data at all.

Nothing in the driver grows with the number of rows. Every output shard is a function of its
input shard alone, so a shard redone after a kill is written exactly as it was the first time.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from curate.crashpoints import CrashPlan, crash_point
from curate.parts import assemble_shard, remove_parts, write_parts
from curate.plan import Plan, Stage
from curate.readers.base import ShardRef, fetch_images, read_shard
from curate.sink import SinkContext, write_final_shard
from curate.stage_store import StageStore, load_shard, stage_columns
from curate.steps import StepRunner, seen_mask

logger = logging.getLogger(__name__)

# Reserved for the tasks that store parts and write shards, so that the actor pools never take
# every CPU and leave them unscheduled (a run would then wait forever).
WRITE_NUM_CPUS = 0.25


@dataclass(frozen=True)
class StageJob:
    """What the read and finish tasks of one stage need (pickled to the workers)."""

    stage_index: int
    earlier: tuple[str, ...]  # cache folders of stages 0..k-1
    store: str  # this stage's cache folder
    input_columns: tuple[str, ...]  # columns the stage reads (empty for stage 0)
    declared: tuple[str, ...]  # existing columns its steps may change
    needs_pixels: bool
    pixel_rows: str
    sink: SinkContext | None  # set in the last stage: finished shards go straight to the sink
    crash: CrashPlan


def _store(path: str) -> StageStore:
    from pathlib import Path

    p = Path(path)
    return StageStore(p.parent, p.name)


def load_stage_input(job: StageJob, ref: ShardRef) -> pa.Table:
    """A shard as the stage's first operation sees it."""
    if job.stage_index == 0:
        return read_shard(ref)
    table = load_shard([_store(p) for p in job.earlier], ref.index)
    if not job.needs_pixels:
        return table
    wanted = pc.indices_nonzero(seen_mask(table, job.pixel_rows).combine_chunks())
    images: list[bytes | None] = [None] * table.num_rows
    for i, data in zip(wanted.to_pylist(), fetch_images(ref, table.take(wanted)), strict=True):
        images[i] = data
    return table.append_column("image", pa.array(images, pa.binary()))


def _read_batch(batch: pa.Table, job: StageJob) -> pa.Table:
    """One row per shard in, that shard's table out (``map_batches`` with batch_size=1)."""
    tables = [
        load_stage_input(job, ShardRef(int(i), str(p), str(f)))
        for i, p, f in zip(
            batch["index"].to_pylist(), batch["path"].to_pylist(), batch["format"].to_pylist(), strict=True
        )
    ]
    return pa.concat_tables(tables, promote_options="default")


def commit_shard(job: StageJob, ref: ShardRef, table: pa.Table) -> dict | None:
    """Write a shard's stage output and marker (and its final shard, in the last stage)."""
    columns = stage_columns(table, list(job.input_columns), set(job.declared), first=job.stage_index == 0)
    _store(job.store).write(ref.index, table.select(columns))
    crash_point("stage_written", job.crash)
    return write_final_shard(job.sink, ref, table) if job.sink is not None else None


def finish_stage_shard(job: StageJob, ref: ShardRef, part_paths: list[str], rows: int) -> dict | None:
    """Assemble a finished shard's parts and commit it."""
    counters = commit_shard(job, ref, assemble_shard(part_paths, rows))
    remove_parts(part_paths)
    return counters


# Step runners built by this worker process, by stage fingerprint and operation: a worker that
# decides shard after shard builds each step once (a MetaCLIP matcher over 500k entries, say).
_RUNNERS: dict[tuple[str, str, str], StepRunner] = {}
_MAX_RUNNERS = 16


def _runner(fingerprint: str, kwargs: dict) -> StepRunner:
    # The state names its run's files (centroids, annotations): two runs never share a runner.
    key = (fingerprint, kwargs["step_id"], json.dumps(kwargs["state"], sort_keys=True, default=str))
    if key not in _RUNNERS:
        if len(_RUNNERS) >= _MAX_RUNNERS:
            _RUNNERS.pop(next(iter(_RUNNERS)))
        _RUNNERS[key] = StepRunner(**kwargs)
    return _RUNNERS[key]


def decide_shard(job: StageJob, fingerprint: str, operations: list[dict], ref: ShardRef) -> dict | None:
    """A whole stage of global decisions for one shard, in one task."""
    table = load_stage_input(job, ref)
    for kwargs in operations:
        table = _runner(fingerprint, kwargs)(table)
    return commit_shard(job, ref, table)


def sink_cached_shard(stores: list[str], sink: SinkContext, ref: ShardRef) -> dict:
    """The final shard from cached stage outputs (the last stage was already computed)."""
    return write_final_shard(sink, ref, load_shard([_store(p) for p in stores], ref.index))


def runner_kwargs(op, states: dict) -> dict:
    return {
        "name": op.spec.name,
        "step_id": op.step_id,
        "params": op.spec.params,
        "rows": op.rows,
        "action": op.action,
        "state": states.get(op.step_id) if op.action == "decide" else None,
    }


def build_dataset(plan: Plan, stage: Stage, job: StageJob, shards: list[ShardRef], tmp_dir: str, states: dict):
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    ray.data.DataContext.get_current().enable_progress_bars = plan.recipe.ray.progress_bars
    items = [{"index": s.index, "path": s.path, "format": s.format} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _read_batch,
        fn_kwargs={"job": job},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=plan.recipe.ray.read_num_cpus,
        compute=TaskPoolStrategy(size=plan.recipe.ray.read_concurrency),
    )
    for op in stage.operations:
        res = op.spec.resources
        ds = ds.map_batches(
            StepRunner,
            fn_constructor_kwargs=runner_kwargs(op, states),
            batch_size=res.batch_size,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            compute=ActorPoolStrategy(size=res.concurrency),
        )
    return ds.map_batches(
        write_parts, fn_kwargs={"tmp_dir": tmp_dir}, batch_size=None, batch_format="pyarrow", num_cpus=WRITE_NUM_CPUS
    )


def run_stage(plan: Plan, stage: Stage, job: StageJob, pending: list[ShardRef], tmp_dir: str, states: dict) -> None:
    """Every pending shard ends with this stage's output written (and its final shard, if last)."""
    if stage.runs_per_shard:
        _run_stage_as_tasks(stage, job, pending, states)
    else:
        _run_stage_as_dataset(plan, stage, job, pending, tmp_dir, states)
    unfinished = [s.index for s in pending if not _store(job.store).is_done(s.index)]
    if unfinished:
        raise RuntimeError(f"stage {stage.index} ended with {len(unfinished)} shard(s) unfinished: {unfinished[:10]}")


def _log_done(results: list[dict | None]) -> None:
    for counters in results:
        if counters is not None:
            logger.info(
                "shard %s done: %d of %d rows written", counters["shard"], counters["written"], counters["rows"]
            )


def _run_stage_as_tasks(stage: Stage, job: StageJob, pending: list[ShardRef], states: dict) -> None:
    import ray

    cpus = max([op.spec.resources.num_cpus for op in stage.operations] or [WRITE_NUM_CPUS])
    task = ray.remote(num_cpus=cpus, max_retries=2)(decide_shard)
    operations = [runner_kwargs(op, states) for op in stage.operations]
    _log_done(ray.get([task.remote(job, stage.fingerprint, operations, ref) for ref in pending]))


def _run_stage_as_dataset(
    plan: Plan, stage: Stage, job: StageJob, pending: list[ShardRef], tmp_dir: str, states: dict
) -> None:
    import ray

    finish = ray.remote(num_cpus=WRITE_NUM_CPUS, max_retries=2)(finish_stage_shard)
    by_index = {s.index: s for s in pending}
    arrived: dict[int, int] = defaultdict(int)
    parts: dict[int, list[str]] = defaultdict(list)
    running = []
    for summary in build_dataset(plan, stage, job, pending, tmp_dir, states).iter_rows():
        index = int(summary["shard_index"])
        arrived[index] += int(summary["rows"])
        parts[index].append(summary["part"])
        crash_point("part_tallied")
        if arrived[index] == int(summary["shard_rows"]):
            running.append(finish.remote(job, by_index[index], parts.pop(index), arrived[index]))
    _log_done(ray.get(running))


def sink_cached(stores: list[StageStore], sink: SinkContext, shards: list[ShardRef]) -> None:
    """Write the final shards of ``shards`` from the cache, one Ray task per shard."""
    import ray

    task = ray.remote(num_cpus=WRITE_NUM_CPUS, max_retries=2)(sink_cached_shard)
    roots = [str(s.root) for s in stores]
    ray.get([task.remote(roots, sink, ref) for ref in shards])
