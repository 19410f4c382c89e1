"""Registries of components that recipes name: steps, input readers and output layouts.

A recipe names a step (``steps[].name``), an input format (``input.format``) and an output
layout (``output.layout``); each is looked up here, never in if/elif chains. Adding one touches
its own module, one entry in the matching ``_BUILTIN_*`` tuple and its test. Built-in modules are
imported lazily, on first lookup, so that heavy optional dependencies load only when a recipe
uses them, and so that this module imports nothing of the project (steps, readers and layouts
import it, never the other way round).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

# Modules whose import registers the built-in components.
_BUILTIN_STEPS = (
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
    "captioners.ocr",
    "captioners.tags",
    "captioners.detector",
    "captioners.dense",
    "captioners.gbc",
)
_BUILTIN_READERS = (
    "curate.readers.tar_reader",
    "curate.readers.parquet_reader",
    "curate.readers.datacomp_reader",
)
_BUILTIN_LAYOUTS = ("curate.sink.samples", "curate.sink.buckets")

# Which rows a step sees. ``kept``: only rows still kept (model steps, captioners: a dropped row
# never pays for a model call). ``all``: every readable row (cheap annotations, so that a user
# can re-threshold later). A recipe may override a step's default with ``rows:``.
Rows = Literal["kept", "all"]


@dataclass(frozen=True)
class StepEntry:
    name: str
    cls: type
    params_model: type[BaseModel]
    needs_pixels: bool
    # A global step decides only once every shard's annotations exist (e.g. a pool-wide quantile):
    # it has ``global_state(con, artifacts) -> dict`` (SQL over the view ``staged``; ``artifacts`` is a
    # folder for what the state should keep, e.g. centroids) and ``decide(table, state)``. The plan
    # cuts a stage at each one (a barrier).
    global_decision: bool
    rows: Rows
    # Existing columns the step may change (besides status / error_message, which any step may set
    # to fail a row); the engine checks that it leaves every other column as it found it.
    modifies: tuple[str, ...]
    summary: str

    def state_columns(self, params: BaseModel) -> tuple[str, ...] | None:
        """The columns of ``staged`` a global step's ``global_state`` reads besides the keys and the
        bookkeeping (``status``, ``keep``, ...), as its class declares them (``state_columns(params)``);
        None when it does not declare them (it may read any column)."""
        declared = getattr(self.cls, "state_columns", None)
        return None if declared is None else tuple(declared(params))

    def decide_columns(self, params: BaseModel) -> tuple[str, ...] | None:
        """The columns of its stage's table a global step's ``decide`` reads besides the keys, the uid
        and the bookkeeping, as its class declares them (``decide_columns(params)``); None when it does
        not declare them (it may read any column, so its stage reads every column of the source)."""
        declared = getattr(self.cls, "decide_columns", None)
        return None if declared is None else tuple(declared(params))

    @property
    def annotates_in_stream(self) -> bool:
        """A global step whose ``__call__`` annotates in the stage before its barrier (in parallel
        workers, e.g. MetaCLIP's entry matching), so that the barrier only counts and decides."""
        return self.global_decision and bool(getattr(self.cls, "annotates_in_stream", False))


@dataclass(frozen=True)
class ReaderEntry:
    name: str
    cls: type  # ``read(ref) -> pa.Table`` and ``fetch_images(ref, rows: pa.Table) -> list[bytes | None]``
    suffixes: tuple[str, ...]  # the files that are its shards
    has_images: bool  # False for metadata-only pools (DataComp): no layout that writes images fits


@dataclass(frozen=True)
class LayoutEntry:
    name: str
    # ``write_shard(ctx, name, kept, files) -> counters`` (staging its files in ``files``, a
    # ``StagedFiles``), ``finish(run, recipe, markers, tasks) -> stats`` (``tasks()``: the run's task
    # pool, for writes that belong in workers) and,
    # optionally, ``validate(recipe)`` (raises ValueError) for rules of its own.
    cls: type
    writes_images: bool  # whether the sink needs the kept rows' image bytes
    summary: str


_STEPS: dict[str, StepEntry] = {}
_READERS: dict[str, ReaderEntry] = {}
_LAYOUTS: dict[str, LayoutEntry] = {}
_loaded: set[str] = set()


def _summary(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _put(table: dict, name: str, entry: object, what: str) -> None:
    if name in table and table[name].cls is not entry.cls:  # type: ignore[attr-defined]
        raise ValueError(f"{what} name {name!r} is registered twice ({table[name].cls} and {entry.cls})")  # type: ignore[attr-defined]
    table[name] = entry


def register_step(
    name: str,
    *,
    params: type[BaseModel],
    needs_pixels: bool = False,
    global_decision: bool = False,
    rows: Rows = "all",
    modifies: tuple[str, ...] = (),
) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if global_decision and not (hasattr(cls, "global_state") and hasattr(cls, "decide")):
            raise TypeError(f"global step {name!r} must define global_state(con) and decide(table, state)")
        entry = StepEntry(name, cls, params, needs_pixels, global_decision, rows, tuple(modifies), _summary(cls))
        _put(_STEPS, name, entry, "step")
        return cls

    return decorate


def register_reader(name: str, *, suffixes: tuple[str, ...], has_images: bool = True) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        _put(_READERS, name, ReaderEntry(name, cls, suffixes, has_images), "reader")
        return cls

    return decorate


def register_layout(name: str, *, writes_images: bool) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        _put(_LAYOUTS, name, LayoutEntry(name, cls, writes_images, _summary(cls)), "layout")
        return cls

    return decorate


def _load(kind: str, modules: tuple[str, ...]) -> None:
    if kind not in _loaded:
        for module in modules:
            importlib.import_module(module)
        _loaded.add(kind)


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; allowed: {', '.join(sorted(table))}") from None


def step_names() -> list[str]:
    _load("steps", _BUILTIN_STEPS)
    return sorted(_STEPS)


def get_step(name: str, module: str | None = None) -> StepEntry:
    """The step ``name``. ``module``: the module that registers it, when the caller knows (a worker
    told by the driver): only that one is imported, not every built-in step's (a worker process
    that runs ``basic`` has no use for the captioners' imports, about a second of its start)."""
    if module is not None and name not in _STEPS:
        importlib.import_module(module)
    if name not in _STEPS:
        _load("steps", _BUILTIN_STEPS)
    return _lookup(_STEPS, name, "step")


def reader_names() -> list[str]:
    _load("readers", _BUILTIN_READERS)
    return sorted(_READERS)


def get_reader(name: str) -> ReaderEntry:
    _load("readers", _BUILTIN_READERS)
    return _lookup(_READERS, name, "input.format")


def layout_names() -> list[str]:
    _load("layouts", _BUILTIN_LAYOUTS)
    return sorted(_LAYOUTS)


def get_layout(name: str) -> LayoutEntry:
    _load("layouts", _BUILTIN_LAYOUTS)
    return _lookup(_LAYOUTS, name, "output.layout")
