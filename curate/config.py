"""Loading recipes: YAML -> ``--set`` overrides -> validated ``Recipe``.

A bad recipe fails here, before any work, with ``RecipeError`` naming the field, the value
and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from curate.stepkit import PIPELINES_DIR
from schemas.recipe import Recipe

__all__ = ["PIPELINES_DIR", "RecipeError", "load_recipe", "validate_recipe"]


class RecipeError(ValueError):
    """A recipe or an override is invalid; the message says where and why."""


def resolve_recipe_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a built-in recipe (``basic`` -> pipelines/basic.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = PIPELINES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if builtin.is_file():
        return builtin
    if path.name and (PIPELINES_DIR / path.name).is_file():
        return PIPELINES_DIR / path.name
    available = ", ".join(sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
    raise RecipeError(f"recipe: value {name_or_path!r} is not a file nor a built-in recipe; built-in: {available}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set: value {item!r} is not of the form path.to.field=value")
    path, raw = item.split("=", 1)
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"--set: value {item!r} names no field")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {path}: value {raw!r} is not valid YAML: {exc}") from None
    return parts, value


def _child(container: Any, part: str, where: str) -> Any:
    if isinstance(container, list):
        if part.isdigit() and int(part) < len(container):
            return int(part)
        if part.isdigit() and int(part) == len(container):
            container.append({})  # one past the end appends: --set steps.2.name=clip_fraction
            return int(part)
        # Steps may be addressed by their id (or name) as well as by position.
        for i, item in enumerate(container):
            if isinstance(item, dict) and part in (item.get("id"), item.get("name")):
                return i
        raise RecipeError(f"--set {where}: no list item {part!r} (use an index 0..{len(container)}, or a step id)")
    if isinstance(container, dict):
        return part
    raise RecipeError(f"--set {where}: cannot descend into a {type(container).__name__}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = _parse_override(item)
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            index = _child(node, part, ".".join(parts[: depth + 1]))
            if isinstance(node, dict) and not isinstance(node.get(index), dict | list):
                node[index] = {}
            node = node[index]
        node[_child(node, parts[-1], ".".join(parts))] = value
    return data


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: value {shown}: {message}")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def load_recipe_data(name_or_path: str) -> dict:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def validate_recipe(data: dict) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc)) from None


def _check_output_url(recipe: Recipe) -> None:
    """A run folder is a local path or an fsspec URL whose filesystem is installed; anything else
    fails now, naming the value, instead of becoming a local folder named after it (./s3:/bucket)."""
    import fsspec

    path = recipe.output.path
    protocol = path.split("://", 1)[0] if "://" in path else "file"
    if protocol in ("file", "local"):
        return
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise RecipeError(
            f"output.path: value {path!r}: no filesystem for {protocol!r} ({exc}); allowed: a local path, "
            "or an object-store URL such as s3://bucket/run (s3fs) whose fsspec filesystem is installed"
        ) from None
    if recipe.input.format == "urls":
        raise RecipeError(
            f"output.path: value {path!r}: a URL pool (input.format 'urls') downloads its images into the run "
            "folder on local disk; allowed: a local --output, or download with img2dataset first and run on its shards"
        )


def load_recipe(
    name_or_path: str,
    overrides: list[str] | None = None,
    *,
    input_path: str | None = None,
    output_path: str | None = None,
) -> Recipe:
    data = apply_overrides(load_recipe_data(name_or_path), list(overrides or []))
    if input_path is not None:
        data.setdefault("input", {})["path"] = input_path
    if output_path is not None:
        data.setdefault("output", {})["path"] = output_path
    if os.environ.get("RAY_ADDRESS") and not (data.get("ray") or {}).get("address"):
        data.setdefault("ray", {})["address"] = os.environ["RAY_ADDRESS"]
    recipe = validate_recipe(data)
    if not recipe.input.path:
        raise RecipeError("input.path: value None: an input is required (recipe input.path or --input)")
    if not recipe.output.path:
        raise RecipeError("output.path: value None: an output folder is required (recipe output.path or --output)")
    _check_output_url(recipe)
    return recipe
