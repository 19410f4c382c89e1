"""Run a recipe: compile its plan, run each stage over the shards it has not done, resume.

    plan = compile_plan(recipe)        stages cut at every global step
    for each stage:                    one Ray Data pass over the shards without a stage marker
        (cached shards are skipped)    then, at a barrier, the global step's state (DuckDB)
    last stage -> sink                 final tar + parquet + stats per shard, done-marker last
    summary                            sizes.json, stats.json, catalog, subset.npy

The unit of work is an input shard, in every stage. Killed at any moment, a re-run redoes only
what has no marker (and of a shard in flight, only the rows its parts do not hold), and writes
exactly what an uninterrupted run writes. Rows a step failed with a retryable status (a model
server that could not answer) are computed again by the next run of the same command, and only
they; what depends on them downstream (later stages of their shard, barrier states, final
shards) is computed again too. Stage outputs and barrier states are cached by fingerprint, so a
re-run with a changed later step (``--overwrite``) recomputes only from the first stage that
changed, and says which stages it reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from curate.barrier import compute_state, publish_artifacts
from curate.catalog import build_catalog
from curate.crashpoints import CrashPlan, crash_point
from curate.executor import WRITE_NUM_CPUS, StageJob, run_stage, sink_cached, stage_label
from curate.plan import Plan, Stage, compile_plan
from curate.readers.base import ShardRef, list_shards, preflight
from curate.registry import get_layout
from curate.run_storage import StagedFiles
from curate.rundir import RunDir
from curate.shard_tasks import (
    LocalShardTasks,
    RayShardTasks,
    ShardTasks,
    local_processes_supported,
    ray_address_named,
)
from curate.shard_work import inputs_digest, plan_shard_work
from curate.sink import SinkContext
from curate.stage_store import StageStore
from curate.stats import merge_counters
from curate.subset import export_run_subset
from schemas.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: RunDir
    stats: dict
    resumed: bool
    shards_done_before: int
    seconds: float
    # Per stage: how many shards it computed and how many it found in the cache.
    stages: list[dict] = field(default_factory=list)


def ensure_ray(recipe: Recipe) -> None:
    import ray

    if ray.is_initialized():
        return
    if recipe.ray.address:
        ray.init(address=recipe.ray.address, log_to_driver=False)
    else:
        ray.init(num_cpus=recipe.ray.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def check_resources(plan: Plan, cluster: dict[str, float]) -> None:
    """Fail early when a stage's actor pools cannot all be placed: Ray would otherwise wait forever.
    Stages run one after another, so the largest stage is what must fit."""
    from curate.config import RecipeError

    for stage in plan.stages:
        cpus = sum(op.spec.resources.num_cpus * op.spec.resources.concurrency for op in stage.operations)
        gpus = sum(op.spec.resources.num_gpus * op.spec.resources.concurrency for op in stage.operations)
        need_cpus = cpus + plan.recipe.ray.read_num_cpus + WRITE_NUM_CPUS
        have_cpus, have_gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
        steps = ", ".join(op.step_id for op in stage.operations)
        if need_cpus > have_cpus + 1e-9:
            raise RecipeError(
                f"steps.*.resources: stage {stage.index} ({steps}) needs {cpus:g} CPUs for its actor pools "
                f"(num_cpus x concurrency), plus {plan.recipe.ray.read_num_cpus:g} to read and {WRITE_NUM_CPUS:g} "
                f"to write = {need_cpus:g}, but the Ray cluster has {have_cpus:g}; lower steps.N.resources.num_cpus "
                "/ concurrency or ray.read_num_cpus"
            )
        if gpus > have_gpus + 1e-9:
            raise RecipeError(
                f"steps.*.resources: stage {stage.index} ({steps}) needs {gpus:g} GPUs, but the Ray cluster has "
                f"{have_gpus:g}; set steps.N.resources.num_gpus to 0 to run on CPU"
            )


def shard_tasks_for(plan: Plan) -> ShardTasks:
    """A local pool when no Ray cluster is named and no step asks for a GPU (``curate.shard_tasks``:
    threads for a plan of per-shard decisions only, processes otherwise); otherwise Ray (started
    here if need be), once its actor pools are known to fit."""
    if not ray_address_named(plan.recipe.ray.address) and not plan.needs_gpu:
        if plan.runs_per_shard_only:
            logger.info("every stage runs one task per shard: running them in this process, without Ray")
            return LocalShardTasks(plan.recipe.ray.num_cpus)
        if local_processes_supported():
            task_cpus = max(op.spec.resources.num_cpus for stage in plan.stages for op in stage.operations)
            tasks = LocalShardTasks(plan.recipe.ray.num_cpus, processes=True, task_cpus=task_cpus)
            logger.info("no cluster named and no GPU step: one task per shard in %d local processes", tasks.workers)
            return tasks
    ensure_ray(plan.recipe)
    import ray

    check_resources(plan, ray.cluster_resources())
    return RayShardTasks()


def _column_params(recipe: Recipe) -> dict[str, str]:
    """Columns that steps read by name (``*_column`` params), unless a step could produce them."""
    if any(s.name in ("clip_embed", "text_embed") for s in recipe.steps):
        return {}
    return {
        f"steps.{i}.params.{key}": value
        for i, step in enumerate(recipe.steps)
        for key, value in step.params.items()
        if key.endswith("_column") and isinstance(value, str)
    }


def resolve_shards(recipe: Recipe, run: RunDir) -> list[ShardRef]:
    if recipe.input.format == "urls":
        from curate.readers.url_pool import download_url_pool

        spec = recipe.input
        pattern = download_url_pool(
            spec.path,
            str(run.download),
            url_col=spec.url_col,
            caption_col=spec.caption_col,
            processes=spec.download_processes,
            threads=spec.download_threads,
            timeout=spec.download_timeout_s,
            retries=spec.download_retries,
            samples_per_shard=spec.samples_per_shard,
        )
        return list_shards(pattern, "img2dataset")
    return list_shards(recipe.input.path, recipe.input.format)


def shard_identities(shards: list[ShardRef]) -> list[str]:
    """Each input shard as the cache knows it: its path, size and modification time (or ETag), so that
    a pool rewritten in place under the same names is never taken for the one cached."""
    import fsspec

    out = []
    for ref in shards:
        fs, _, (path,) = fsspec.get_fs_token_paths(ref.path)
        info = fs.info(path)
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
        out.append(f"{ref.path}|{info.get('size')}|{stamp}")
    return out


def output_fingerprint(plan: Plan) -> str:
    """What determines the final output: the last stage and the output settings."""
    payload = {"stage": plan.stages[-1].fingerprint, "output": plan.recipe.output.model_dump(exclude={"path"})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _describe(stage: Stage) -> dict:
    return {
        "stage": stage.index,
        "fingerprint": stage.fingerprint,
        "operations": [o.describe() for o in stage.operations],
    }


def _decide_reads(stage: Stage) -> tuple[str, ...] | None:
    """What a stage of global decisions only reads (``StageJob.decide_reads``); None for any other."""
    reads: set[str] = set()
    for op in stage.operations:
        columns = op.entry.decide_columns(op.entry.params_model(**op.spec.params)) if op.action == "decide" else None
        if columns is None:
            return None
        reads.update(columns)
    return tuple(sorted(reads))


def _final_is_current(run: RunDir, ref: ShardRef, version: str) -> bool:
    """Whether the shard's final files were written from the last stage's output of ``version``."""
    return (run.read_marker(ref.index) or {}).get("stage_version") == version


def _run_stages(plan: Plan, run: RunDir, shards: list[ShardRef], crash: CrashPlan, tasks: ShardTasks) -> list[dict]:
    sink = SinkContext(run.url, plan.recipe.output, plan.step_rows, crash, plan.changed_columns)
    stores: list[StageStore] = []
    states: dict[str, dict] = {}
    # Per shard, the versions its next stage is computed from: earlier stage outputs, barrier states.
    upstream: dict[int, list[str]] = {s.index: [] for s in shards}
    report = []
    for stage in plan.stages:
        run.check_hold()
        started = time.perf_counter()
        run.write_state("running", stage=stage.index, stage_label=stage_label(stage))
        store = StageStore(run.cache_storage, stage.cache_name)
        store.prepare(_describe(stage))
        works = []
        for ref in shards:
            work = plan_shard_work(store, ref, upstream[ref.index], partial_ok=not stage.runs_per_shard)
            if work is not None:
                works.append(work)
        retried = sum(len(w.redo) for w in works if w.redo is not None)
        logger.info(
            "%s: %d of %d shards reused from %s, %d to compute (%d rows to retry)",
            stage_label(stage),
            len(shards) - len(works),
            len(shards),
            store.name,
            len(works),
            retried,
        )
        if works:
            job = StageJob(
                stage_index=stage.index,
                earlier=tuple(stores),
                store=store,
                input_columns=tuple(c for s in stores for c in s.columns()),
                declared=tuple(sorted({c for op in stage.operations for c in op.entry.modifies})),
                step_ids=tuple(op.step_id for op in stage.operations),
                needs_pixels=stage.needs_pixels,
                pixel_rows=stage.pixel_rows,
                named_columns=plan.columns_named_by_steps,
                first_stores=plan.first_stage_stores if stage.index == 0 else None,
                source_arrays=stage.is_last and plan.recipe.output.source_arrays == "copy",
                decide_reads=_decide_reads(stage),
                sink=sink if stage.is_last else None,
                crash=crash,
            )
            run_stage(plan, stage, job, works, states, tasks)
        stores.append(store)
        versions = {ref.index: store.read_marker(ref.index)["version"] for ref in shards}
        store.clear_parts()  # also when nothing was computed: a killed attempt may have committed first
        for ref in shards:
            upstream[ref.index].append(versions[ref.index])
        if stage.is_last:
            computed = {w.ref.index for w in works}
            cached = [s for s in shards if s.index not in computed and not _final_is_current(run, s, versions[s.index])]
            if cached:
                sink_cached(stores, sink, cached, versions, tasks)
        entry = {
            "stage": stage.index,
            "computed": len(works),
            "reused": len(shards) - len(works),
            "cache": store.name,
        }
        entry["retried_rows"] = retried
        entry["seconds"] = round(time.perf_counter() - started, 2)
        if stage.barrier is not None:
            started = time.perf_counter()
            inputs = inputs_digest(upstream)
            state, from_cache = compute_state(run, stage, stores, inputs)
            states[stage.barrier.step_id] = state
            for ref in shards:
                upstream[ref.index].append(inputs)
            publish_artifacts(run, stage)
            entry["barrier"] = {
                "step": stage.barrier.step_id,
                "reused": from_cache,
                "seconds": round(time.perf_counter() - started, 2),
            }
            _save_states(run, states)
            crash_point("barrier_saved")
        report.append(entry)
    return report


def _save_states(run: RunDir, states: dict[str, dict]) -> None:
    run.storage.write_json("global_state.json", states)


def _write_table(run: RunDir, name: str, table: pa.Table) -> None:
    with run.storage.writer(name) as f:
        pq.write_table(table, f)


# steps.parquet's columns, named even for a recipe without steps (DuckDB reads no column-less file).
_STEPS_SCHEMA = pa.schema(
    [("step", pa.string()), *((c, pa.int64()) for c in ("in", "kept", "dropped", "failed"))]
    + [("dropped_by_reason", pa.string()), ("failed_by_reason", pa.string())]
)


def _write_summary(plan: Plan, run: RunDir, stages: list[dict], tasks: Callable[[], ShardTasks]) -> dict:
    recipe = plan.recipe
    markers = run.read_markers()
    stats = merge_counters(markers)
    stats["recipe"] = recipe.name
    stats["steps_order"] = list(plan.step_ids)
    stats.update(get_layout(recipe.output.layout).cls().finish(run, recipe, markers, tasks))
    shard_rows = [
        {
            "shard": m["shard"],
            "shard_index": m["shard_index"],
            "source": m["source"],
            "rows": m["rows"],
            "written": m["written"],
            "status": json.dumps(m["status"]),
            # columns the catalog's samples view reads from the source: name -> SQL (``curate.catalog``)
            "left_in_source": json.dumps(m.get("left_in_source") or {}),
        }
        for m in markers
    ]
    _write_table(run, "shards.parquet", pa.Table.from_pylist(shard_rows))
    copied = [m["source"] for m in markers if not m.get("left_in_source")]
    if recipe.output.source_columns == "leave" and copied:  # said, not silent: the sidecars hold them
        logger.warning(
            "output.source_columns: leave: %d of %d shards copied their columns into the sidecars (their "
            "path is relative, has glob characters or is remote, or their rows need per-row conversions), "
            "e.g. %s; see shards.parquet's left_in_source",
            len(copied),
            len(markers),
            copied[0],
        )
    step_rows = []
    for step_id in stats["steps_order"]:
        c = stats["steps"].get(step_id, {"in": 0, "kept": 0, "dropped": {}, "failed": {}})
        step_rows.append(
            {
                "step": step_id,
                "in": c["in"],
                "kept": c["kept"],
                "dropped": sum(c["dropped"].values()),
                "failed": sum(c["failed"].values()),
                "dropped_by_reason": json.dumps(c["dropped"]),
                "failed_by_reason": json.dumps(c["failed"]),
            }
        )
    _write_table(run, "steps.parquet", pa.Table.from_pylist(step_rows, schema=_STEPS_SCHEMA))
    build_catalog(run.url)
    # The kept uids as a DataComp subset file, for DataComp's resharder or `curate run reshard`.
    with StagedFiles(run.storage) as files:
        uids = export_run_subset(run.url, files.path("subset.npy"), view="sidecars")
        files.commit()
    stats["subset"] = {"path": "subset.npy", "uids": uids}
    run.storage.write_json("stats.json", stats)
    run.clear_local_tmp()
    return stats


def run_recipe(recipe: Recipe, *, overwrite: bool = False) -> RunResult:
    start = time.perf_counter()
    run = RunDir(recipe.output.path)
    with run.lock():
        # Listing is cheap and needs no Ray; for URL pools the download is itself resumable.
        if recipe.input.format == "urls":
            run.storage.makedirs()
            plan = compile_plan(recipe, [recipe.input.path])
        else:
            shards = resolve_shards(recipe, run)
            preflight(shards, _column_params(recipe))
            plan = compile_plan(recipe, shard_identities(shards))
        resumed = run.prepare(recipe, output_fingerprint(plan), overwrite=overwrite)
        if recipe.input.format == "urls":
            shards = resolve_shards(recipe, run)
        done_before = sum(run.is_done(s.index) for s in shards)
        if resumed:
            logger.info("resuming: %d of %d shards already done", done_before, len(shards))
        stages: list[dict] = []
        run.write_state("running", started=time.time(), stage=None, error=None, traceback=None)
        pool: list[ShardTasks] = []

        def tasks() -> ShardTasks:
            """The run's task pool, made when first needed (a finished run re-run starts none)."""
            if not pool:
                pool.append(shard_tasks_for(plan))
            return pool[0]

        try:
            if done_before < len(shards) or run.has_retryable_rows():
                stages = _run_stages(plan, run, shards, CrashPlan.from_env(run.local_tmp / "crash"), tasks())
            # What this invocation computed and reused (stats.json holds only what the output is).
            run.storage.write_json("stages.json", stages)
            crash_point("before_run_summary")
            run.check_hold()
            stats = _write_summary(plan, run, stages, tasks)
        except Exception as exc:
            run.record_error(exc)
            raise
        finally:
            for made in pool:
                made.close()
        run.write_state("finished", stage=None)
    return RunResult(run, stats, resumed, done_before, time.perf_counter() - start, stages)
