"""Killed runs resume to exactly what an uninterrupted run writes; run folders are guarded."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from run_helpers import finish, snapshot, start_cli

from curate.config import load_recipe
from curate.rundir import RunDir, RunFolderError
from curate.runner import run_recipe


@pytest.fixture(scope="module")
def reference_run(ray_session, small_pool_pattern, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run_recipe(load_recipe("basic", input_path=small_pool_pattern, output_path=str(out)))
    return out


def _cli(pattern: str, out: Path, ray_address: str, crash_at: str | None = None):
    return start_cli("basic", pattern, out, ray_address, crash_at=crash_at)


def _assert_same_output(run: Path, reference: Path) -> None:
    got, want = snapshot(run), snapshot(reference)
    assert got["stray"] == [] and got["tmp_left"] == []
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"{name} differs after resume"


@pytest.mark.parametrize(
    "crash_at", ["part_tallied:3", "shard_files_written:2", "shard_renamed:1", "before_run_summary:1"]
)
def test_sigkill_at_a_crash_point_then_resume(crash_at, reference_run, small_pool_pattern, ray_session, tmp_path):
    out = tmp_path / "run"
    killed = _cli(small_pool_pattern, out, ray_session, crash_at)
    log = finish(killed)
    assert killed.returncode == -signal.SIGKILL, log
    resumed = _cli(small_pool_pattern, out, ray_session)
    log = finish(resumed)
    assert resumed.returncode == 0, log
    _assert_same_output(out, reference_run)


def test_sigkill_from_outside_mid_run_then_resume(reference_run, small_pool_pattern, ray_session, tmp_path):
    """The driver is killed by a signal from outside while workers are mid-flight. The second final
    shard's writer holds (never finishes), so the kill lands mid-run by construction, not by timing."""
    out = tmp_path / "run"
    proc = _cli(small_pool_pattern, out, ray_session, "shard_files_written:2:hold")
    held = out / "_tmp" / "crash" / "held-shard_files_written"
    deadline = time.monotonic() + 240  # a guard against a hang, not a condition of the test
    while not (held.exists() and list((out / "_done").glob("*.json"))):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached its held shard and a done shard"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done_at_kill = len(list((out / "_done").glob("*.json")))
    assert 1 <= done_at_kill < 4
    resumed = _cli(small_pool_pattern, out, ray_session)
    log = finish(resumed)
    assert resumed.returncode == 0, log
    assert "resumed" in log
    _assert_same_output(out, reference_run)


def test_folder_in_use_is_refused(small_pool_pattern, tmp_path):
    recipe = load_recipe("basic", input_path=small_pool_pattern, output_path=str(tmp_path / "run"))
    with RunDir(tmp_path / "run").lock(), pytest.raises(RunFolderError, match="in use by another curate run"):
        run_recipe(recipe)


def test_other_recipe_refused_unless_overwrite(reference_run, small_pool_pattern, ray_session):
    other = load_recipe(
        "basic", ["steps.basic.params.min_side=100"], input_path=small_pool_pattern, output_path=str(reference_run)
    )
    with pytest.raises(RunFolderError, match="different recipe"):
        run_recipe(other)
    same = load_recipe("basic", input_path=small_pool_pattern, output_path=str(reference_run))
    again = run_recipe(same)  # the same recipe on a finished run: nothing to redo
    assert again.resumed and again.shards_done_before == 4


def test_overwrite_replaces_a_run(small_pool_pattern, ray_session, tmp_path):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "junk.txt").write_text("not a run")
    recipe = load_recipe("basic", input_path=small_pool_pattern, output_path=str(out))
    with pytest.raises(RunFolderError, match="not empty"):
        run_recipe(recipe)
    result = run_recipe(recipe, overwrite=True)
    assert not (out / "junk.txt").exists() and result.stats["shards"] == 4
