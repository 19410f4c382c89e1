"""Registry of pipeline steps: recipes name components, the registry finds their classes.

Adding a step touches its own module, one entry in ``_BUILTIN_MODULES`` and its test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

# Modules whose import registers the built-in steps; imported lazily, on first lookup, so
# that heavy optional dependencies load only when a recipe uses their step.
_BUILTIN_MODULES = (
    "filters.image_check",
    "filters.basic",
    "filters.clip_embed",
    "filters.clip_score",
    "filters.image_based",
    "filters.text_based",
    "filters.text_embed",
    "filters.subset",
    "filters.mode",
    "filters.semdedup",
    "filters.metaclip",
    "curate.pack.tokenize",
    "curate.pack.decompose_step",
)


@dataclass(frozen=True)
class StepEntry:
    name: str
    cls: type
    params_model: type[BaseModel]
    needs_pixels: bool
    # A global step decides only once every shard's annotations exist (e.g. a pool-wide quantile):
    # it has ``global_state(con, artifacts) -> dict`` (SQL over the view ``staged``; ``artifacts`` is a
    # folder for what the state should keep, e.g. centroids) and ``decide(table, state)``.
    global_decision: bool
    summary: str


_REGISTRY: dict[str, StepEntry] = {}
_loaded = False


def register_step(
    name: str, *, params: type[BaseModel], needs_pixels: bool = False, global_decision: bool = False
) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"step name {name!r} is registered twice ({_REGISTRY[name].cls} and {cls})")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        if global_decision and not (hasattr(cls, "global_state") and hasattr(cls, "decide")):
            raise TypeError(f"global step {name!r} must define global_state(con) and decide(table, state)")
        _REGISTRY[name] = StepEntry(name, cls, params, needs_pixels, global_decision, summary)
        return cls

    return decorate


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def step_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_step(name: str) -> StepEntry:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; allowed: {', '.join(sorted(_REGISTRY))}") from None
