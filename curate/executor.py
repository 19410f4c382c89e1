"""Running one stage of a plan; shard outputs are written by Ray tasks, never by the driver.

A stage with per-batch steps is one Ray Data pass:

    from_items(pending shards) -> read (source shard, or earlier stages' outputs + image bytes by
    range) -> one map_batches actor pool per operation -> write_parts

The driver only counts rows per shard from the parts' summaries; once a shard's rows have all
arrived it starts a Ray task that assembles them, writes the stage's output for that shard and its
marker, and, in the last stage, the final shard through the sink.

A stage that only applies global decisions (or only reads, when a recipe starts with a global
step) has no model to keep warm in an actor pool: it runs as one task per shard that reads,
decides, writes and commits, with no rows moving through Ray Data at all. Per-shard tasks go to a
``curate.shard_tasks`` pool: Ray tasks, or a local pool when the plan needs no Ray. In a local pool
every stage runs that way, its per-batch steps too (``compute_shard``): a process builds each step
once and runs it over whole shards, in slices of the step's ``batch_size``.

Nothing in the driver grows with the number of rows. Every output shard is a function of its
input shard alone, so a shard redone after a kill is written exactly as it was the first time.
A shard's work may be some of its rows only (``curate.shard_work``): the rows a step failed with a
retryable status, or those an interrupted attempt's parts do not hold; its finish task puts them
together with the rows it keeps.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from curate.crashpoints import CrashPlan, crash_point
from curate.parts import assemble_shard, part_folder, remove_parts, write_parts
from curate.plan import Plan, Stage
from curate.progress import StageProgress
from curate.readers.base import (
    ShardRef,
    fetch_images,
    projects_columns,
    read_columns,
    read_shard,
    source_array_columns,
    source_columns,
)
from curate.shard_tasks import ShardTasks
from curate.shard_work import ShardWork
from curate.sink import SinkContext, left_in_source, write_final_shard
from curate.stage_store import (
    BOOKKEEPING_COLUMNS,
    KEY_COLUMNS,
    StageStore,
    load_shard,
    stage_columns,
    stored_in_source,
)
from curate.steps import StepRunner, seen_mask
from schemas.tables import HEAVY_COLUMNS, RETRYABLE_STATUSES

logger = logging.getLogger(__name__)

# Reserved for the tasks that store parts and write shards, so that the actor pools never take
# every CPU and leave them unscheduled (a run would then wait forever).
WRITE_NUM_CPUS = 0.25


@dataclass(frozen=True)
class StageJob:
    """What the read and finish tasks of one stage need (pickled to the workers)."""

    stage_index: int
    earlier: tuple[StageStore, ...]  # cache folders of stages 0..k-1
    store: StageStore  # this stage's cache folder
    input_columns: tuple[str, ...]  # columns the stage reads (empty for stage 0)
    declared: tuple[str, ...]  # existing columns its steps may change
    step_ids: tuple[str, ...]  # the steps of this stage (a row it failed retryably is retried after it)
    needs_pixels: bool
    pixel_rows: str
    named_columns: tuple[str, ...]  # columns steps name (``*_column``): stage 0 reads and stores them
    # Stage 0: the source's columns it stores besides keys, bookkeeping and what its steps add or change
    # (``Plan.first_stage_stores``); None: every column.
    first_stores: tuple[str, ...] | None
    # Whether the stage's input carries every array its source keeps (``source_array_columns``), not
    # only the named ones: in the last stage, when the sink copies them into the output.
    source_arrays: bool
    # When every operation of the stage only applies a global decision and says what it reads
    # (``StepEntry.decide_columns``), those columns; the last stage reads no other column the sink
    # leaves in the source. None: a step may read any column.
    decide_reads: tuple[str, ...] | None
    sink: SinkContext | None  # set in the last stage: finished shards go straight to the sink
    crash: CrashPlan


def _stores_lean(job: StageJob, ref: ShardRef) -> bool:
    """Whether stage 0 stores of the shard only the keys, the bookkeeping, what its steps add or
    change and ``first_stores``, the source's other columns staying in the source."""
    return job.stage_index == 0 and job.first_stores is not None and projects_columns(ref)


def _only_rows(table: pa.Table, rows: list[int] | None) -> pa.Table:
    if rows is None:
        return table
    return table.filter(pc.is_in(table["row_in_shard"], pa.array(rows, table.schema.field("row_in_shard").type)))


def _not_read_again(job: StageJob, ref: ShardRef) -> set[str]:
    """The columns stage 0 left in the source that this stage's input goes without. Before the last
    stage: the arrays (a step reads one only by naming it, and stage 0 stores the named ones). In
    the last: what the sink leaves in the source too but what the stage's decisions read, or only
    its arrays if a step of the stage may read any column."""
    if job.sink is None:
        return set(source_array_columns(ref))
    left = left_in_source(job.sink, ref)
    if job.decide_reads is None:
        return {c for c, sql in left.items() if sql is None}
    return {c for c in left if c not in job.decide_reads}


def load_stage_input(job: StageJob, ref: ShardRef, rows: list[int] | None = None) -> pa.Table:
    """A shard (or ``rows`` of it) as the stage's first operation sees it."""
    if job.stage_index == 0:
        if _stores_lean(job, ref) and not job.step_ids:  # no step reads the rest
            names = [*KEY_COLUMNS, *BOOKKEEPING_COLUMNS, *job.first_stores]
            if job.sink is not None:  # a recipe without steps: the sink writes what it does not leave
                skip = _not_read_again(job, ref)
                names = [c for c in source_columns(ref) if c not in skip]
            return _only_rows(read_columns(ref, names), rows)
        wanted = {*job.named_columns, *job.declared}
        named = None if job.source_arrays else [c for c in source_array_columns(ref) if c in wanted]
        return _only_rows(read_shard(ref, named), rows)
    table = _only_rows(load_shard(list(job.earlier), ref, _not_read_again(job, ref)), rows)
    if not job.needs_pixels:
        return table
    wanted = pc.indices_nonzero(seen_mask(table, job.pixel_rows).combine_chunks())
    images: list[bytes | None] = [None] * table.num_rows
    for i, data in zip(wanted.to_pylist(), fetch_images(ref, table.take(wanted)), strict=True):
        images[i] = data
    return table.append_column("image", pa.array(images, pa.binary()))


def _read_batch(batch: pa.Table, job: StageJob) -> pa.Table:
    """One row per shard in, that shard's table (or the rows to compute of it) out (batch_size=1)."""
    tables = [
        load_stage_input(job, ShardRef(int(i), str(p), str(f)), rows)
        for i, p, f, rows in zip(
            batch["index"].to_pylist(),
            batch["path"].to_pylist(),
            batch["format"].to_pylist(),
            batch["rows"].to_pylist(),
            strict=True,
        )
    ]
    return pa.concat_tables(tables, promote_options="default")


def retry_rows(table: pa.Table, step_ids: tuple[str, ...]) -> list[int]:
    """Rows that a step of this stage failed with a retryable status (its decision is their last)."""
    mask = pc.fill_null(pc.is_in(table["status"], pa.array(RETRYABLE_STATUSES)), False)
    rows = []
    for i in pc.indices_nonzero(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask).to_pylist():
        decisions = table["decisions"][i].as_py() or []
        if decisions and decisions[-1]["step"] in step_ids:
            rows.append(int(table["row_in_shard"][i].as_py()))
    return rows


def commit_shard(job: StageJob, work: ShardWork, table: pa.Table) -> dict | None:
    """Write a shard's stage output and marker (and its final shard, in the last stage)."""
    first = job.stage_index == 0
    output = table.select(stage_columns(table, list(job.input_columns), set(job.declared), first=first))
    in_source, order = [], None
    if _stores_lean(job, work.ref):
        source = source_columns(work.ref)
        known = set(source)
        added = [c for c in output.column_names if c not in known]
        stored = {*KEY_COLUMNS, *BOOKKEEPING_COLUMNS, *job.declared, *job.first_stores, *added}
        output = output.select([c for c in output.column_names if c in stored])
        columns = [*(c for c in source if c not in HEAVY_COLUMNS), *added]
        in_source, order = stored_in_source(columns, work.ref, set(job.named_columns), set(output.column_names))
    elif first:
        in_source, order = stored_in_source(output.column_names, work.ref, {*job.named_columns, *job.declared})
    if order is not None:  # stored and sunk in the order a later load gives them
        output = output.select([c for c in order if c in output.column_names])
        table = table.select(
            [*(c for c in order if c in table.column_names), *(c for c in table.column_names if c not in order)]
        )
    retry = retry_rows(table, job.step_ids)
    version = job.store.write(work.ref.index, output, list(work.inputs), retry, in_source, order)
    crash_point("stage_written", job.crash)
    return write_final_shard(job.sink, work.ref, table, version) if job.sink is not None else None


def _kept_of_previous(job: StageJob, work: ShardWork) -> pa.Table | None:
    """The rows of the shard's previous stage output that this work keeps (all but ``work.redo``)."""
    if work.redo is None:
        return None
    previous = load_shard([*job.earlier, job.store], work.ref, _not_read_again(job, work.ref))
    redo = pa.array(work.redo, previous.schema.field("row_in_shard").type)
    return previous.filter(pc.invert(pc.is_in(previous["row_in_shard"], redo)))


def finish_stage_shard(job: StageJob, work: ShardWork, part_names: list[str], rows: int) -> dict | None:
    """Assemble a finished shard's parts (with the rows it keeps of its previous output) and commit it."""
    parts = job.store.parts
    counters = commit_shard(job, work, assemble_shard(parts, part_names, rows, _kept_of_previous(job, work)))
    remove_parts(parts, part_folder(work.ref.index, work.attempt))
    return counters


# Step runners built by this worker (a Ray worker process, or a thread of the driver's local pool),
# by stage fingerprint and operation: a worker that decides shard after shard builds each step once
# (a MetaCLIP matcher over 500k entries, say). Per thread, because a step is not built to be called
# from two threads at once.
_WORKER = threading.local()
_MAX_RUNNERS = 16


def _runner(fingerprint: str, kwargs: dict) -> StepRunner:
    runners: dict[tuple[str, str, str], StepRunner] = _WORKER.__dict__.setdefault("runners", {})
    # The state names its run's files (centroids, annotations): two runs never share a runner.
    key = (fingerprint, kwargs["step_id"], json.dumps(kwargs["state"], sort_keys=True, default=str))
    if key not in runners:
        if len(runners) >= _MAX_RUNNERS:
            runners.pop(next(iter(runners)))
        runners[key] = StepRunner(**kwargs)
    return runners[key]


def compute_shard(job: StageJob, fingerprint: str, operations: list[dict], work: ShardWork) -> dict | None:
    """A whole stage for one shard, in one task: its rows to compute read, every operation applied
    (a per-batch step's ``__call__`` in slices of its ``batch_size``, as Ray Data would batch it), put
    together with the rows it already has (parts an interrupted attempt left, the kept rows of its
    previous output), committed."""
    table = None
    if not work.nothing_to_compute:
        table = load_stage_input(job, work.ref, None if work.rows is None else list(work.rows))
        for op in operations:
            table = _apply(_runner(fingerprint, op["runner"]), table, op["batch_size"])
    if work.rows is not None:  # some rows only: the rest are in parts or in the previous output
        table = assemble_shard(job.store.parts, list(work.parts), work.shard_rows, _kept_of_previous(job, work), table)
    counters = commit_shard(job, work, table)
    if work.parts:
        remove_parts(job.store.parts, part_folder(work.ref.index, work.attempt))
    return counters


def _apply(runner: StepRunner, table: pa.Table, batch_size: int | None) -> pa.Table:
    if batch_size is None or table.num_rows <= batch_size:
        return runner(table)
    slices = [runner(table.slice(at, batch_size)) for at in range(0, table.num_rows, batch_size)]
    # permissive: a column all null in one slice is null-typed there, as in parts
    return pa.concat_tables(slices, promote_options="permissive")


def sink_cached_shard(stores: list[StageStore], sink: SinkContext, ref: ShardRef, version: str) -> dict:
    """The final shard from cached stage outputs (the last stage was already computed)."""
    return write_final_shard(sink, ref, load_shard(stores, ref, set(left_in_source(sink, ref))), version)


def runner_kwargs(op, states: dict) -> dict:
    return {
        "name": op.spec.name,
        "step_id": op.step_id,
        "params": op.spec.params,
        "rows": op.rows,
        "action": op.action,
        "state": states.get(op.step_id) if op.action == "decide" else None,
        "module": op.entry.cls.__module__,  # the worker imports that step's module alone
    }


def build_dataset(plan: Plan, stage: Stage, job: StageJob, works: list[ShardWork], states: dict):
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    quiet_ray_data()
    items = [
        {
            "index": w.ref.index,
            "path": w.ref.path,
            "format": w.ref.format,
            "rows": None if w.rows is None else list(w.rows),
        }
        for w in works
    ]
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
        write_parts,
        fn_kwargs={
            "parts": job.store.parts,
            "attempts": {w.ref.index: w.attempt for w in works},
            "crash": job.crash,
        },
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=WRITE_NUM_CPUS,
    )


def quiet_ray_data() -> None:
    """Ray Data's bars and its non-terminal ``logging_progress`` lines (every operator's counters,
    repeated every few seconds) give way to curate's own progress (``curate.progress``)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # Its one warning is that its bars are off, which is what we want.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        # `curate -v` keeps Ray Data's plan lines and its issue detectors, whose advice (every 30 s, ten
        # lines each) names Ray calls a recipe does not make; a recipe sets resources instead.
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context.issue_detectors_config.detectors = []


def stage_label(stage: Stage) -> str:
    names = ", ".join(op.describe().split(" [")[0] for op in stage.operations) or "read"
    return f"stage {stage.index} [{names}]"


def run_stage(plan: Plan, stage: Stage, job: StageJob, works: list[ShardWork], states: dict, tasks: ShardTasks) -> None:
    """Every shard of ``works`` ends with this stage's output written (and its final shard, if last).
    Per-shard tasks run on ``tasks``; on Ray (``RayShardTasks``) a stage with per-batch steps is a Ray
    Data pass, in a local pool (``whole_shards``) every stage is one task per shard."""
    progress = StageProgress(stage_label(stage), len(works), enabled=plan.recipe.ray.progress_bars)
    try:
        if stage.runs_per_shard or tasks.whole_shards:
            _run_stage_as_tasks(stage, job, works, states, progress, tasks)
        else:
            _run_stage_as_dataset(plan, stage, job, works, states, progress, tasks)
    finally:
        progress.close()
    store = job.store
    unfinished = []
    for work in works:
        marker = store.read_marker(work.ref.index)
        if marker is None or marker["inputs"] != list(work.inputs) or marker["version"] == work.previous_version:
            unfinished.append(work.ref.index)
    if unfinished:
        raise RuntimeError(f"stage {stage.index} ended with {len(unfinished)} shard(s) unfinished: {unfinished[:10]}")


def _count_finished(tasks: ShardTasks, running: list, progress: StageProgress | None, *, wait: bool) -> list:
    """Count the shard tasks that have ended (all of them with ``wait``); return those still running.
    A task's error is raised here."""
    while running:
        ended, running = tasks.finished(running, wait=wait)
        for counters in ended:
            if progress is not None:
                progress.shard_done()
            if counters is not None:
                logger.info(
                    "shard %s done: %d of %d rows written", counters["shard"], counters["written"], counters["rows"]
                )
        if not wait:
            break
    return running


def _await_shards(tasks: ShardTasks, running: list, progress: StageProgress | None) -> None:
    _count_finished(tasks, running, progress, wait=True)


def _run_stage_as_tasks(
    stage: Stage, job: StageJob, works: list[ShardWork], states: dict, progress: StageProgress, tasks: ShardTasks
) -> None:
    cpus = max([op.spec.resources.num_cpus for op in stage.operations] or [WRITE_NUM_CPUS])
    # A decision is per row and cheap: it takes the shard whole. A step's call takes its batches.
    operations = [
        {
            "runner": runner_kwargs(op, states),
            "batch_size": None if op.action == "decide" else op.spec.resources.batch_size,
        }
        for op in stage.operations
    ]
    running = [tasks.submit(compute_shard, job, stage.fingerprint, operations, w, num_cpus=cpus) for w in works]
    _await_shards(tasks, running, progress)


def _run_stage_as_dataset(
    plan: Plan,
    stage: Stage,
    job: StageJob,
    works: list[ShardWork],
    states: dict,
    progress: StageProgress,
    tasks: ShardTasks,
) -> None:
    def finish(work: ShardWork, part_names: list[str], rows: int):
        return tasks.submit(finish_stage_shard, job, work, part_names, rows, num_cpus=WRITE_NUM_CPUS)

    by_index = {w.ref.index: w for w in works}
    # What each shard already has: parts an interrupted attempt left, rows kept from its previous output.
    arrived = {w.ref.index: w.covered for w in works}
    parts = {w.ref.index: list(w.parts) for w in works}
    running = [finish(w, parts.pop(w.ref.index), w.shard_rows) for w in works if w.nothing_to_compute]
    to_compute = [w for w in works if not w.nothing_to_compute]
    if to_compute:
        for summary in build_dataset(plan, stage, job, to_compute, states).iter_rows():
            index = int(summary["shard_index"])
            arrived[index] += int(summary["rows"])
            progress.rows_arrived(index, int(summary["rows"]), int(summary["shard_rows"]) - by_index[index].covered)
            parts[index].append(summary["part"])
            crash_point("part_tallied")
            if arrived[index] == int(summary["shard_rows"]):
                running.append(finish(by_index[index], parts.pop(index), arrived[index]))
            running = _count_finished(tasks, running, progress, wait=False)
    _await_shards(tasks, running, progress)


def sink_cached(
    stores: list[StageStore], sink: SinkContext, shards: list[ShardRef], versions: dict[int, str], tasks: ShardTasks
) -> None:
    """Write the final shards of ``shards`` from the cache, one task per shard."""
    running = [
        tasks.submit(sink_cached_shard, stores, sink, ref, versions[ref.index], num_cpus=WRITE_NUM_CPUS)
        for ref in shards
    ]
    _await_shards(tasks, running, None)
