"""Recipes validate before any work, naming field, value and what is allowed."""

from __future__ import annotations

import pytest

from curate.config import (
    PIPELINES_DIR,
    RecipeError,
    apply_overrides,
    load_recipe,
    resolve_recipe_path,
    validate_recipe,
)

# Recipes that name a file the user supplies get one here.
USER_FILES = {
    "datacomp_image_based": ("image_based", "reference_embeddings"),
    "datacomp_1b": ("image_based", "reference_embeddings"),
    "reshard": ("subset", "path"),
    "datacomp_text_based": ("text_based", "vocabulary"),
}


@pytest.mark.parametrize("path", sorted(PIPELINES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_builtin_recipe_is_valid(path, tmp_path):
    overrides = []
    if path.stem in USER_FILES:
        step, field = USER_FILES[path.stem]
        (tmp_path / "ref.npy").write_text("cat\n")
        overrides.append(f"steps.{step}.params.{field}={tmp_path / 'ref.npy'}")
    recipe = load_recipe(str(path), overrides, input_path="pool/*.tar", output_path="run")
    assert recipe.steps, f"{path.name} has no steps"


def test_missing_user_file_fails_at_validation():
    with pytest.raises(RecipeError, match=r"reference_embeddings: value 'imagenet_l14.npy' is not a file"):
        load_recipe("datacomp_1b", input_path="m/*.parquet", output_path="run")


def test_builtin_recipe_by_name():
    assert resolve_recipe_path("basic").name == "basic.yaml"
    assert resolve_recipe_path("pipelines/basic.yaml").name == "basic.yaml"


def test_unknown_step_names_allowed_steps():
    with pytest.raises(RecipeError) as e:
        validate_recipe({"steps": [{"name": "basik"}]})
    msg = str(e.value)
    assert "steps.0.name" in msg and "'basik'" in msg and "basic" in msg and "image_check" in msg


def test_wrong_param_type_names_field_and_value():
    with pytest.raises(RecipeError) as e:
        validate_recipe({"steps": [{"name": "basic", "params": {"min_side": "large"}}]})
    msg = str(e.value)
    assert "steps.0.params.min_side" in msg and "'large'" in msg and "integer" in msg


def test_unknown_param_is_refused():
    with pytest.raises(RecipeError, match=r"steps\.0\.params\.min_sides"):
        validate_recipe({"steps": [{"name": "basic", "params": {"min_sides": 3}}]})


def test_bad_resources_and_unknown_top_level_field():
    with pytest.raises(RecipeError, match=r"steps\.0\.resources\.batch_size"):
        validate_recipe({"steps": [{"name": "basic", "resources": {"batch_size": 0}}]})
    with pytest.raises(RecipeError, match=r"stepz"):
        validate_recipe({"stepz": []})


def test_duplicate_step_ids_refused():
    with pytest.raises(RecipeError, match="used twice"):
        validate_recipe({"steps": [{"name": "basic"}, {"name": "basic"}]})


def test_missing_input_and_output_fail_at_once(tmp_path):
    with pytest.raises(RecipeError, match=r"input\.path"):
        load_recipe("basic", output_path=str(tmp_path))
    with pytest.raises(RecipeError, match=r"output\.path"):
        load_recipe("basic", input_path="x.tar")


def test_set_overrides_by_index_and_by_step_id():
    recipe = load_recipe(
        "basic",
        ["steps.basic.params.min_side=128", "steps.0.resources.batch_size=64", "ray.progress_bars=false"],
        input_path="x.tar",
        output_path="run",
    )
    assert recipe.steps[1].params["min_side"] == 128
    assert recipe.steps[0].resources.batch_size == 64
    assert recipe.ray.progress_bars is False


def test_set_override_errors():
    with pytest.raises(RecipeError, match="not of the form"):
        apply_overrides({}, ["no_equals_sign"])
    with pytest.raises(RecipeError, match="no list item 'nope'"):
        apply_overrides({"steps": [{"name": "basic"}]}, ["steps.nope.params.x=1"])
    with pytest.raises(RecipeError, match=r"steps\.1\.params\.min_side.*'abc'"):
        load_recipe("basic", ["steps.1.params.min_side=abc"], input_path="x", output_path="y")


def test_an_output_url_without_a_filesystem_is_refused_not_written_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"output\.path: value 'nosuch://bucket/run': no filesystem for 'nosuch'"):
        load_recipe("basic", input_path="pool/*.tar", output_path="nosuch://bucket/run")
    with pytest.raises(RecipeError, match=r"output\.path: value 's3://bucket/run': a URL pool"):
        load_recipe("basic", ["input.format=urls"], input_path="urls.parquet", output_path="s3://bucket/run")
    assert load_recipe("basic", input_path="pool/*.tar", output_path="s3://bucket/run").output.path == "s3://bucket/run"
    assert not any(tmp_path.iterdir())
