"""A plan of per-shard stages only (a CLIP-score fraction over DataComp metadata) runs in the
driver's threads, without Ray, and writes what the same plan writes as Ray tasks."""

from __future__ import annotations

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
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sql_only = compile_plan(_recipe(metadata, tmp_path / "a"))
    assert sql_only.runs_per_shard_only
    local = shard_tasks_for(sql_only)
    assert isinstance(local, LocalShardTasks)
    local.close()
    with_basic = compile_plan(
        load_recipe("datacomp_basic", input_path=f"{metadata}/*.parquet", output_path=str(tmp_path / "b"))
    )
    assert not with_basic.runs_per_shard_only
    assert isinstance(shard_tasks_for(with_basic), RayShardTasks)
    # A named cluster takes the tasks even when the plan could run without it.
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    assert isinstance(shard_tasks_for(sql_only), RayShardTasks)


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


def test_cli_run_of_a_sql_plan_starts_no_ray(metadata, tmp_path):
    """In a process of its own (the test session's Ray is not there), `curate run` never starts Ray:
    ``ray.is_initialized()`` is still false when the run has finished."""
    out = tmp_path / "run"
    script = (
        "import sys, ray\n"
        "from curate.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert not ray.is_initialized(), 'Ray was started'\n"
        "sys.exit(code)\n"
    )
    args = ["run", "datacomp_clip_score", "--input", f"{metadata}/*.parquet", "--output", str(out)]
    env = {"RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 260 <= len(np.load(out / "subset.npy")) <= 280
