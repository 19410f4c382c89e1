"""A run folder on an object store, end to end: the three-stage recipe of the staged engine with
``--output s3://...`` on a real S3 server (moto's, on 127.0.0.1), its output byte for byte the same
as the same run's on a local path, SIGKILLed and resumed to identical output, its catalog queried
where it lies, and a second run on the held folder refused.

The runs name no Ray cluster, as a user on one machine runs them: the plan needs no GPU, so its
shard tasks run in local worker processes, each reaching the bucket on its own (the environment
names the server)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from run_helpers import HANG_GUARD_S, run_cli, snapshot
from s3_server import new_bucket
from test_stages import THREE_STAGES

from curate.run_storage import RunStorage

# A killed run's lease is taken over once unrenewed for a whole lease: 4 s here, not the default 60 s.
LEASE = {"CURATE_LEASE_S": "4"}


@pytest.fixture(scope="module")
def local_reference(small_pool_pattern, tmp_path_factory):
    out = tmp_path_factory.mktemp("s3_ref") / "run"
    done = run_cli("basic", small_pool_pattern, out, None, THREE_STAGES)
    assert done.returncode == 0, done.stdout
    return snapshot(out)


@pytest.fixture(scope="module")
def s3_run(s3_env, small_pool_pattern) -> str:
    url = new_bucket() + "/run"
    done = run_cli("basic", small_pool_pattern, url, None, THREE_STAGES, env_extra=LEASE)
    assert done.returncode == 0, done.stdout
    assert f"shards:  {url}/shards/" in done.stdout
    return url


def _same_output(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key


def test_a_run_on_s3_writes_what_the_same_run_writes_locally(s3_run, local_reference):
    got = snapshot(s3_run)
    assert sum(got["sizes"].values()) > 300 and len([k for k in got if k.endswith(".tar")]) == 4
    _same_output(got, local_reference)
    storage = RunStorage(s3_run)
    for name in ("run.json", "recipe.yaml", "stages.json", "global_state.json", "subset.npy", "catalog.duckdb"):
        assert storage.exists(name), name
    assert not RunStorage(s3_run).exists(".lease")  # released when the run ended


def test_the_catalog_of_an_s3_run_is_queried_where_it_lies(s3_run, local_reference):
    query = [sys.executable, "-m", "curate.cli", "query", s3_run, "select count(*) as n from kept", "--format", "csv"]
    out = subprocess.run(query, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["n", str(local_reference["stats"]["written"])]
    status = [sys.executable, "-m", "curate.cli", "status", s3_run]
    out = subprocess.run(status, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    assert f"run {s3_run}: recipe 'basic', finished" in out.stdout
    # The commands that read a local run folder refuse a remote one by name, instead of failing on a path.
    for args in (["report", s3_run], ["inspect", s3_run, "0" * 32], ["mode-weights", s3_run, "--classes", "a,b"]):
        command = [sys.executable, "-m", "curate.cli", *args]
        out = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
        said = " ".join((out.stdout + out.stderr).split())
        assert out.returncode != 0 and f"curate {args[0]}: RUN" in said and "does not read yet" in said, said


def test_a_second_run_on_a_held_s3_folder_is_refused(s3_run, small_pool_pattern):
    with RunStorage(s3_run).hold(lease_s=4.0):  # a live run renews its lease meanwhile
        refused = run_cli("basic", small_pool_pattern, s3_run, None, THREE_STAGES, env_extra=LEASE)
    assert refused.returncode != 0
    assert "is in use by another curate run" in " ".join(refused.stdout.split())  # as the terminal wraps it


@pytest.mark.parametrize("crash_at", ["stage_written:6", "shard_renamed:3"])
def test_sigkill_in_an_s3_run_then_resume(crash_at, s3_env, small_pool_pattern, local_reference):
    url = new_bucket() + "/run"
    killed = run_cli("basic", small_pool_pattern, url, None, THREE_STAGES, crash_at=crash_at, env_extra=LEASE)
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    storage = RunStorage(url)
    assert not storage.exists("stats.json")  # it died mid-run
    resumed = run_cli("basic", small_pool_pattern, url, None, THREE_STAGES, env_extra=LEASE)
    assert resumed.returncode == 0, resumed.stdout
    _same_output(snapshot(url), local_reference)
