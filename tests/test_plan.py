"""The plan of stages: where a recipe is cut, which rows each step sees, and what the fingerprints cover."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curate.config import RecipeError, load_recipe, validate_recipe
from curate.plan import compile_plan

FULL = ["image_check", "basic", "clip_embed", "semdedup", "clip_fraction", "text_embed", "tokenize", "decompose"]


def _plan(overrides=None, shards=("a.tar", "b.tar")):
    return compile_plan(load_recipe("curate_full", overrides, input_path="x", output_path="y"), list(shards))


def test_curate_full_is_cut_at_each_global_step():
    plan = _plan()
    assert [s.step_id for s in plan.recipe.steps] == FULL
    stages = [[(op.step_id, op.action, op.rows) for op in s.operations] for s in plan.stages]
    assert stages == [
        [("image_check", "call", "all"), ("basic", "call", "all"), ("clip_embed", "call", "kept")],
        [("semdedup", "decide", "kept")],
        [
            ("clip_fraction", "decide", "kept"),
            ("text_embed", "call", "kept"),
            ("tokenize", "call", "kept"),
            ("decompose", "call", "kept"),
        ],
    ]
    assert [s.barrier.step_id if s.barrier else None for s in plan.stages] == ["semdedup", "clip_fraction", None]
    assert [s.needs_pixels for s in plan.stages] == [True, False, False]
    assert [s.is_last for s in plan.stages] == [False, False, True]


def test_rows_default_from_the_registry_and_recipe_override():
    recipe = validate_recipe({"steps": [{"name": "basic"}, {"name": "clip_score", "params": {"threshold": 0.2}}]})
    assert [s.sees for s in recipe.steps] == ["all", "all"]
    recipe = validate_recipe({"steps": [{"name": "basic", "rows": "kept"}, {"name": "text_embed"}]})
    assert [s.sees for s in recipe.steps] == ["kept", "kept"]
    with pytest.raises(RecipeError, match=r"steps\.0\.rows: value 'some'"):
        validate_recipe({"steps": [{"name": "basic", "rows": "some"}]})


def test_a_later_change_keeps_earlier_fingerprints():
    base = _plan()
    changed = _plan(["steps.clip_fraction.params.fraction=0.5"])
    same = [a.fingerprint == b.fingerprint for a, b in zip(base.stages, changed.stages, strict=True)]
    # The fraction changes the clip_fraction barrier and the stage that applies its decisions.
    assert same == [True, True, False]
    assert base.stages[0].barrier_fingerprint == changed.stages[0].barrier_fingerprint
    assert base.stages[1].barrier_fingerprint != changed.stages[1].barrier_fingerprint
    # An early change changes every stage after it; Ray resources change none.
    early = _plan(["steps.basic.params.min_side=100"])
    assert all(a.fingerprint != b.fingerprint for a, b in zip(base.stages, early.stages, strict=True))
    resources = _plan(["steps.clip_embed.resources.batch_size=64", "ray.read_concurrency=1"])
    assert [s.fingerprint for s in resources.stages] == [s.fingerprint for s in base.stages]
    # Other input shards, other fingerprints.
    assert _plan(shards=("a.tar",)).stages[0].fingerprint != base.stages[0].fingerprint


def test_rows_override_is_part_of_the_fingerprint():
    base = _plan()
    other = _plan(["steps.clip_embed.rows=all"])
    assert base.stages[0].fingerprint != other.stages[0].fingerprint


def test_annotating_global_step_runs_in_the_stage_before_its_barrier():
    recipe = validate_recipe(
        {"steps": [{"name": "basic"}, {"name": "metaclip", "params": {"entries": "pipelines/metaclip_entries.txt"}}]}
    )
    stages = [[(op.step_id, op.action) for op in s.operations] for s in compile_plan(recipe).stages]
    assert stages == [[("basic", "call"), ("metaclip", "call")], [("metaclip", "decide")]]


def test_consecutive_global_steps_and_a_recipe_that_starts_with_one():
    recipe = validate_recipe(
        {
            "input": {"format": "datacomp"},
            "output": {"layout": "metadata"},
            "steps": [{"name": "clip_fraction", "params": {"fraction": 0.3}}, {"name": "image_based"}],
        }
    )
    plan = compile_plan(recipe)
    assert [[(op.step_id, op.action) for op in s.operations] for s in plan.stages] == [
        [],
        [("clip_fraction", "decide")],
        [("image_based", "decide")],
    ]


def test_unknown_format_and_layout_name_the_allowed_ones():
    with pytest.raises(RecipeError, match=r"input\.format: value 'tarball'.*allowed: auto, urls, datacomp"):
        validate_recipe({"input": {"format": "tarball"}})
    with pytest.raises(RecipeError, match=r"output\.layout: value 'zip'.*allowed: buckets, metadata, samples"):
        validate_recipe({"output": {"layout": "zip"}})


def test_plan_command_prints_stages_reads_and_writes():
    out = subprocess.run(
        [sys.executable, "-m", "curate.cli", "plan", "curate_full"], capture_output=True, text=True, check=True
    ).stdout
    assert "3 stage(s)" in out
    assert "clip_embed [rows: kept; 1 x 0.75 CPU, batch 256]" in out
    assert "barrier semdedup: global_state over stages 0..0" in out
    assert "stage 2" in out and "clip_fraction.decide [rows: kept" in out
    assert "reads stage outputs" in out and "sink (buckets)" in out


def test_steps_stand_apart_from_the_engine():
    """Steps import the leaf helpers, the registry and schemas, never the engine (a fresh interpreter
    imports every step module and looks at what came with them)."""
    code = (
        "import sys\n"
        "from curate.registry import step_names, reader_names, layout_names\n"
        "step_names()\n"
        "engine = ['curate.runner', 'curate.executor', 'curate.barrier', 'curate.sink', 'curate.rundir',"
        " 'curate.stage_store', 'curate.parts', 'curate.plan']\n"
        "print([m for m in engine if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
