"""Global steps: a pool-wide fraction threshold, staged shards, and exact resume across the global phase."""

from __future__ import annotations

import json
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
from run_helpers import run_cli, snapshot

from curate.catalog import connect
from curate.config import load_recipe, validate_recipe
from curate.runner import run_recipe

FRACTION_SET = ["steps.2.name=clip_fraction", "steps.2.params.score_column=lang_score", "steps.2.params.fraction=0.5"]


def _recipe_with_fraction(pattern, out):
    data = ["steps.2.resources.batch_size=64"]  # creates steps.2 as a mapping, then names it
    return load_recipe("basic", data + FRACTION_SET, input_path=pattern, output_path=str(out))


@pytest.fixture(scope="module")
def fraction_run(ray_session, small_pool_pattern, tmp_path_factory):
    out = tmp_path_factory.mktemp("fraction")
    return run_recipe(_recipe_with_fraction(small_pool_pattern, out))


def test_fraction_threshold_is_global_and_matches_datacomp_rule(fraction_run):
    with connect(fraction_run.run_dir.root) as con:
        rows = con.execute("select uid, lang_score, keep, decisions from samples").fetchall()
    scores = np.array([r[1] for r in rows if r[1] is not None])
    # DataComp's get_threshold: N = all pool rows, the score at index int(N * f) sorted descending.
    threshold = -np.sort(-scores)[int(len(rows) * 0.5)]
    state = json.loads((fraction_run.run_dir.root / "global_state.json").read_text())["clip_fraction"]
    assert state["pool_size"] == len(rows) == 1200
    assert state["threshold"] == pytest.approx(float(threshold))
    for uid, score, keep, decisions in rows:
        by_step = {d["step"]: d for d in decisions}
        if score is None:
            assert "clip_fraction" not in by_step  # failed rows never reach a step
            continue
        assert by_step["clip_fraction"]["keep"] == (score >= threshold), uid
        assert keep == all(d["keep"] for d in decisions)


def test_per_shard_thresholds_would_differ(fraction_run):
    """The threshold is one number for the pool, not one per shard."""
    per_shard = []
    for path in sorted(fraction_run.run_dir.shards.glob("*.parquet")):
        scores = pq.read_table(path, columns=["lang_score"])["lang_score"].drop_null().to_numpy()
        per_shard.append(-np.sort(-scores)[int(len(scores) * 0.5)])
    assert len(set(np.round(per_shard, 6))) > 1
    assert not (fraction_run.run_dir.root / "_stage").exists()  # the stage is removed at the end


def test_steps_may_follow_a_global_step():
    """A per-batch step after a global step is a new stage, not an error."""
    from curate.plan import compile_plan

    recipe = validate_recipe(
        {
            "steps": [
                {"name": "basic"},
                {"name": "clip_fraction", "params": {"fraction": 0.3}},
                {"name": "basic", "id": "again"},
            ]
        }
    )
    plan = compile_plan(recipe)
    assert [[(op.step_id, op.action) for op in s.operations] for s in plan.stages] == [
        [("basic", "call")],
        [("clip_fraction", "decide"), ("again", "call")],
    ]


def test_sigkill_in_global_phase_then_resume(fraction_run, small_pool_pattern, ray_session, tmp_path):
    out = tmp_path / "run"
    args = ["steps.2.resources.batch_size=64", *FRACTION_SET]
    killed = run_cli("basic", small_pool_pattern, out, ray_session, args, crash_at="shard_files_written:2")
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    assert (out / "global_state.json").exists()  # killed after the state was saved, mid-way through writing
    resumed = run_cli("basic", small_pool_pattern, out, ray_session, args)
    assert resumed.returncode == 0, resumed.stdout
    got, want = snapshot(out), snapshot(fraction_run.run_dir.root)
    assert got["stray"] == [] and got["tmp_left"] == []
    assert got == want
