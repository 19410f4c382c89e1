"""Shared fixtures: one Ray session for the whole test run, one small synthetic pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test; subprocess runs join it through ``address``, runs in the test
    process through ``RAY_ADDRESS`` (without a named cluster a run would use a local pool instead)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    address = ray.get_runtime_context().gcs_address
    before = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    yield address
    if before is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = before
    ray.shutdown()


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> Path:
    """1200 samples in 4 shards of img2dataset output, faults at rates high enough to count."""
    from curate.synth import FaultRates, make_pool

    out = tmp_path_factory.mktemp("pool")
    faults = FaultRates(
        swapped_caption=0.04,
        non_english=0.05,
        too_short=0.04,
        empty_caption=0.03,
        tiny_image=0.04,
        extreme_aspect=0.04,
        near_duplicate=0.04,
        corrupt_image=0.04,
        failed_download=0.04,
    )
    make_pool(str(out), samples=1200, shard_size=300, seed=7, faults=faults, workers=2)
    return out


def pool_pattern(pool: Path) -> str:
    """The brace pattern a user would type for a pool's shards."""
    tars = sorted(p.name for p in pool.glob("*.tar"))
    return f"{pool}/{{{tars[0][:-4]}..{tars[-1][:-4]}}}.tar"


@pytest.fixture(scope="session")
def small_pool_pattern(small_pool) -> str:
    return pool_pattern(small_pool)


@pytest.fixture(scope="session")
def basic_run(ray_session, small_pool_pattern, tmp_path_factory):
    """The basic recipe on the small pool, run once in-process for every test that reads it."""
    from curate.config import load_recipe
    from curate.runner import run_recipe

    out = tmp_path_factory.mktemp("run_basic")
    return run_recipe(load_recipe("basic", input_path=small_pool_pattern, output_path=str(out)))


@pytest.fixture(scope="session")
def s3_env():
    """A real S3 server on 127.0.0.1 for the whole test run (see ``s3_server``); yields the AWS
    environment that names it, which is also set in this process."""
    from s3_server import s3_server

    with s3_server() as env:
        yield env
