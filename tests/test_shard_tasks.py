"""Without a named cluster and without a GPU step a run needs no Ray: a plan of per-shard stages only
(a CLIP-score fraction over DataComp metadata) runs in the driver's threads, any other in local
processes, and each writes what the same plan writes on Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.config import load_recipe
from curate.plan import compile_plan
from curate.runner import run_recipe, shard_tasks_for
from curate.shard_tasks import LocalShardTasks, RayShardTasks

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from datacomp_meta import make_datacomp_metadata  # noqa: E402


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard_tasks_meta")
    make_datacomp_metadata(str(out), shards=3, rows_per_shard=300, seed=11, dims={"l14_img": 16, "b32_img": 8})
    return out


def _recipe(metadata: Path, out: Path):
    return load_recipe("datacomp_clip_score", input_path=f"{metadata}/*.parquet", output_path=str(out))


def test_pool_follows_the_plan_and_the_named_cluster(ray_session, metadata, tmp_path, monkeypatch):
    from curate.config import RecipeError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sql_only = compile_plan(_recipe(metadata, tmp_path / "a"))
    assert sql_only.runs_per_shard_only
    local = shard_tasks_for(sql_only)
    assert isinstance(local, LocalShardTasks) and not local.processes
    local.close()
    basic = load_recipe("datacomp_basic", input_path=f"{metadata}/*.parquet", output_path=str(tmp_path / "b"))
    with_basic = compile_plan(basic)
    assert not with_basic.runs_per_shard_only
    local = shard_tasks_for(with_basic)
    assert (
        isinstance(local, LocalShardTasks) and local.processes and local.workers == (os.cpu_count() or 1)
    )  # 1 CPU a task
    local.close()
    # A step asking for a GPU goes to Ray, which schedules GPUs: here it has none, and says so.
    on_gpu = load_recipe(
        "datacomp_basic",
        ["steps.basic.resources.num_gpus=1"],
        input_path=f"{metadata}/*.parquet",
        output_path=str(tmp_path / "c"),
    )
    with pytest.raises(RecipeError, match="needs 1 GPUs"):
        shard_tasks_for(compile_plan(on_gpu))
    # A named cluster takes the tasks even when the plan could run without it.
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    assert isinstance(shard_tasks_for(sql_only), RayShardTasks)
    assert isinstance(shard_tasks_for(with_basic), RayShardTasks)


def test_threads_write_what_ray_tasks_write(ray_session, metadata, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = run_recipe(_recipe(metadata, tmp_path / "local"))
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    on_ray = run_recipe(_recipe(metadata, tmp_path / "ray"))
    # DataComp's rule (tests/test_datacomp.py checks it): about 30% of the 900 rows, ties kept.
    assert local.stats["written"] == on_ray.stats["written"]
    assert 260 <= local.stats["written"] <= 280
    assert np.array_equal(np.load(tmp_path / "local" / "subset.npy"), np.load(tmp_path / "ray" / "subset.npy"))
    for path in sorted((tmp_path / "ray" / "shards").glob("*.parquet")):
        assert pq.read_table(tmp_path / "local" / "shards" / path.name).equals(pq.read_table(path)), path.name


def test_processes_write_what_ray_writes(ray_session, metadata, tmp_path, monkeypatch):
    """datacomp_basic (fastText and per-row Python: a per-batch step) in local processes, one task per
    whole shard, writes exactly what Ray Data's actor pool writes."""

    def basic(out: Path):
        return load_recipe("datacomp_basic", input_path=f"{metadata}/*.parquet", output_path=str(out))

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = run_recipe(basic(tmp_path / "local"))
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    on_ray = run_recipe(basic(tmp_path / "ray"))
    assert local.stats["written"] == on_ray.stats["written"] > 0
    assert local.stats["steps"] == on_ray.stats["steps"] and local.stats["status"] == on_ray.stats["status"]
    assert np.array_equal(np.load(tmp_path / "local" / "subset.npy"), np.load(tmp_path / "ray" / "subset.npy"))
    for path in sorted((tmp_path / "ray" / "shards").glob("*.parquet")):
        assert pq.read_table(tmp_path / "local" / "shards" / path.name).equals(pq.read_table(path)), path.name


@pytest.mark.parametrize("recipe", ["datacomp_clip_score", "datacomp_basic"])
def test_cli_run_without_a_cluster_starts_no_ray(recipe, metadata, tmp_path):
    """In a process of its own (the test session's Ray is not there), `curate run` of a plan with no
    GPU step never starts Ray: ``ray.is_initialized()`` is still false when the run has finished."""
    out = tmp_path / "run"
    script = (
        "import sys, ray\n"
        "from curate.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert not ray.is_initialized(), 'Ray was started'\n"
        "sys.exit(code)\n"
    )
    args = ["run", recipe, "--input", f"{metadata}/*.parquet", "--output", str(out)]
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(np.load(out / "subset.npy")) > 0
    if recipe == "datacomp_clip_score":
        assert 260 <= len(np.load(out / "subset.npy")) <= 280
