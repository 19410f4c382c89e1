"""Run a recipe on Ray Data: read shards, run steps on actor pools, write shards, resume.

The unit of work is an input shard. The driver lists shards, skips those with a done-marker,
and streams the rest through ``read -> step_1 ... step_n -> write_parts``; it tallies the part
summaries and finalizes each shard as soon as all its rows have arrived. Killed at any
moment, a re-run redoes only unfinished shards and writes exactly what an uninterrupted run
writes, because every output shard is a function of its input shard alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.catalog import build_catalog
from curate.crashpoints import crash_point
from curate.global_steps import (
    compute_global_states,
    finish_staged_shards,
    global_steps,
    is_staged,
    remove_stage,
    streaming_steps,
    write_stage,
)
from curate.readers.base import ShardRef, list_shards, preflight, read_shard
from curate.rundir import RunDir, atomic_write_text, recipe_fingerprint
from curate.splits import finish_splits
from curate.stats import merge_counters
from curate.subset import export_run_subset
from curate.writer import assemble_shard, finalize_shard, write_parts
from schemas.recipe import Recipe

logger = logging.getLogger(__name__)

WRITE_NUM_CPUS = 0.25


@dataclass
class RunResult:
    run_dir: RunDir
    stats: dict
    resumed: bool
    shards_done_before: int
    seconds: float


def ensure_ray(recipe: Recipe) -> None:
    import ray

    if ray.is_initialized():
        return
    if recipe.ray.address:
        ray.init(address=recipe.ray.address, log_to_driver=False)
    else:
        ray.init(num_cpus=recipe.ray.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _read_batch(batch: pa.Table) -> pa.Table:
    """One row per shard in, that shard's sample table out (Ray ``map_batches`` with batch_size=1)."""
    tables = [
        read_shard(ShardRef(int(i), str(p), str(f)))
        for i, p, f in zip(
            batch["index"].to_pylist(), batch["path"].to_pylist(), batch["format"].to_pylist(), strict=True
        )
    ]
    return pa.concat_tables(tables, promote_options="default")


def build_dataset(recipe: Recipe, shards: list[ShardRef], tmp_dir: str):
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from curate.steps import StepRunner

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = recipe.ray.progress_bars
    items = [{"index": s.index, "path": s.path, "format": s.format} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _read_batch,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=recipe.ray.read_num_cpus,
        compute=TaskPoolStrategy(size=recipe.ray.read_concurrency),
    )
    for step in streaming_steps(recipe):
        res = step.resources
        ds = ds.map_batches(
            StepRunner,
            fn_constructor_kwargs={"name": step.name, "step_id": step.step_id, "params": step.params},
            batch_size=res.batch_size,
            batch_format="pyarrow",
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            compute=ActorPoolStrategy(size=res.concurrency),
        )
    return ds.map_batches(
        write_parts, fn_kwargs={"tmp_dir": tmp_dir}, batch_size=None, batch_format="pyarrow", num_cpus=WRITE_NUM_CPUS
    )


def check_resources(recipe: Recipe, cluster: dict[str, float]) -> None:
    """Fail early when the actor pools cannot all be placed: Ray would otherwise wait forever."""
    from curate.config import RecipeError

    pools = streaming_steps(recipe)  # global steps decide in the driver, not in actor pools
    cpus = sum(s.resources.num_cpus * s.resources.concurrency for s in pools)
    gpus = sum(s.resources.num_gpus * s.resources.concurrency for s in pools)
    need_cpus = cpus + recipe.ray.read_num_cpus + WRITE_NUM_CPUS
    have_cpus, have_gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if need_cpus > have_cpus + 1e-9:
        raise RecipeError(
            f"steps.*.resources: the steps' actor pools need {cpus:g} CPUs (num_cpus x concurrency), plus "
            f"{recipe.ray.read_num_cpus:g} to read and {WRITE_NUM_CPUS:g} to write = {need_cpus:g}, but the Ray "
            f"cluster has {have_cpus:g}; lower steps.N.resources.num_cpus / concurrency or ray.read_num_cpus"
        )
    if gpus > have_gpus + 1e-9:
        raise RecipeError(
            f"steps.*.resources: the steps' actor pools need {gpus:g} GPUs, but the Ray cluster has {have_gpus:g}; "
            "set steps.N.resources.num_gpus to 0 to run on CPU"
        )


def _execute(recipe: Recipe, run: RunDir, pending: list[ShardRef]) -> None:
    """The streaming pass: every pending shard ends written (or staged, if there are global steps)."""
    step_ids = [s.step_id for s in recipe.steps]
    staging = bool(global_steps(recipe))
    arrived: dict[int, int] = defaultdict(int)
    parts: dict[int, list[str]] = defaultdict(list)
    ds = build_dataset(recipe, pending, str(run.tmp))
    for summary in ds.iter_rows():
        index = int(summary["shard_index"])
        arrived[index] += int(summary["rows"])
        parts[index].append(summary["part"])
        crash_point("part_tallied")
        if arrived[index] == int(summary["shard_rows"]) and staging:
            shard_parts = parts.pop(index)
            write_stage(run, index, assemble_shard(shard_parts, arrived[index]))
            for p in shard_parts:
                Path(p).unlink(missing_ok=True)
        elif arrived[index] == int(summary["shard_rows"]):
            counters = finalize_shard(run, index, parts.pop(index), arrived[index], recipe.output, step_ids)
            logger.info(
                "shard %s done: %d of %d rows written", counters["shard"], counters["written"], counters["rows"]
            )
    unfinished = [s.index for s in pending if not (run.is_done(s.index) or is_staged(run, s.index))]
    if unfinished:
        raise RuntimeError(f"run ended with {len(unfinished)} shard(s) unfinished: {unfinished[:10]}")


def _write_summary(recipe: Recipe, run: RunDir, shards: list[ShardRef]) -> dict:
    markers = run.read_markers()
    stats = merge_counters(markers)
    stats["recipe"] = recipe.name
    stats["steps_order"] = [s.step_id for s in recipe.steps]
    if recipe.output.layout == "buckets":
        from curate.pack.buckets import write_buckets

        stats["buckets"] = {b["k"]: b["sequences"] for b in write_buckets(run, recipe)["buckets"]}
    elif recipe.output.layout == "samples":
        sizes = {m["shard"]: m["samples_written"] for m in sorted(markers, key=lambda m: m["shard_index"])}
        atomic_write_text(run.shards / "sizes.json", json.dumps(sizes, indent=2))
    if recipe.output.split is not None:
        stats["splits"] = {"folder": recipe.output.split.folder, "samples": finish_splits(run, recipe.output, markers)}
    shard_rows = [
        {
            "shard": m["shard"],
            "shard_index": m["shard_index"],
            "source": m["source"],
            "rows": m["rows"],
            "written": m["written"],
            "status": json.dumps(m["status"]),
        }
        for m in markers
    ]
    pq.write_table(pa.Table.from_pylist(shard_rows), run.root / "shards.parquet")
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
    pq.write_table(pa.Table.from_pylist(step_rows), run.root / "steps.parquet")
    build_catalog(run.root)
    # The kept uids as a DataComp subset file, for DataComp's resharder or `curate run reshard`.
    stats["subset"] = {"path": "subset.npy", "uids": export_run_subset(run.root, run.root / "subset.npy")}
    atomic_write_text(run.stats, json.dumps(stats, indent=2))
    # Parts that a killed run's orphaned workers wrote late belong to no shard any more.
    shutil.rmtree(run.tmp, ignore_errors=True)
    remove_stage(run)
    return stats


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


def run_recipe(recipe: Recipe, *, overwrite: bool = False) -> RunResult:
    start = time.perf_counter()
    run = RunDir(recipe.output.path)
    with run.lock():
        # Listing is cheap and needs no Ray; for URL pools the download is itself resumable.
        if recipe.input.format == "urls":
            run.root.mkdir(parents=True, exist_ok=True)
            fingerprint = recipe_fingerprint(recipe, [recipe.input.path])
        else:
            shards = resolve_shards(recipe, run)
            preflight(shards, _column_params(recipe))
            fingerprint = recipe_fingerprint(recipe, [s.path for s in shards])
        resumed = run.prepare(recipe, fingerprint, overwrite=overwrite)
        if recipe.input.format == "urls":
            shards = resolve_shards(recipe, run)
        pending = [s for s in shards if not (run.is_done(s.index) or is_staged(run, s.index))]
        done_before = len(shards) - len(pending)
        if resumed:
            logger.info("resuming: %d of %d shards already done", done_before, len(shards))
        if pending:
            ensure_ray(recipe)
            import ray

            check_resources(recipe, ray.cluster_resources())
            _execute(recipe, run, pending)
        if global_steps(recipe) and not all(run.is_done(s.index) for s in shards):
            states = compute_global_states(run, recipe)
            finish_staged_shards(run, recipe, [s.index for s in shards], states)
        crash_point("before_run_summary")
        stats = _write_summary(recipe, run, shards)
    return RunResult(run, stats, resumed, done_before, time.perf_counter() - start)
