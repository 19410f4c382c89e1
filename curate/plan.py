"""A recipe compiled into a plan of stages, cut at every global step (a barrier).

    recipe: image_check, basic, clip_embed, semdedup*, clip_fraction*, text_embed, tokenize
    stage 0: image_check, basic, clip_embed                 -> barrier semdedup (state over stage 0)
    stage 1: semdedup.decide                                -> barrier clip_fraction (over stages 0-1)
    stage 2: clip_fraction.decide, text_embed, tokenize     -> sink (tar + parquet + stats per shard)

Each stage is one Ray Data pass over the input shards (or, run without a cluster and without a GPU
step, one task per shard in a local pool: ``curate.shard_tasks``). An operation in a stage is a step's
``__call__`` (a per-batch step, or a global step that ``annotates_in_stream`` in the stage before its
barrier) or a global step's ``decide`` with the state its barrier computed. Every operation sees
the rows its step declares (``rows: kept`` or ``all``). A stage's outputs are cached under a
fingerprint of the input and of every step up to and including that stage, so changing a later
step reuses every earlier stage. The plan is compiled once; the executor, the barrier code and
the sink follow it and never ask the registry what kind a step is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from curate.registry import StepEntry, get_layout, get_reader, get_step
from schemas.recipe import SPECIAL_INPUT_FORMATS, Recipe, StepSpec

Action = Literal["call", "decide"]


@dataclass(frozen=True)
class Operation:
    """One step's work inside a stage: its ``__call__`` or its global ``decide``."""

    spec: StepSpec
    entry: StepEntry
    action: Action
    rows: str  # kept | all

    @property
    def step_id(self) -> str:
        return self.spec.step_id

    @property
    def decides(self) -> bool:
        """Whether this operation can write a decision (an annotating ``__call__`` of a global step cannot)."""
        return self.action == "decide" or not self.entry.global_decision

    def describe(self) -> str:
        what = f"{self.step_id}.decide" if self.action == "decide" else self.step_id
        if self.action == "call" and self.entry.global_decision:
            what += " (annotate)"
        res = self.spec.resources
        gpu = f", {res.num_gpus:g} GPU" if res.num_gpus else ""
        return f"{what} [rows: {self.rows}; {res.concurrency} x {res.num_cpus:g} CPU{gpu}, batch {res.batch_size}]"


@dataclass(frozen=True)
class Stage:
    index: int
    operations: tuple[Operation, ...]
    barrier: Operation | None  # the global step whose state is computed over this stage's output
    fingerprint: str  # of the input and of every step up to and including this stage
    is_last: bool

    @property
    def needs_pixels(self) -> bool:
        return any(op.entry.needs_pixels for op in self.operations)

    @property
    def runs_per_shard(self) -> bool:
        """A stage of global decisions only (or of none) runs as one task per shard: there is no
        model to keep warm in an actor pool, so no rows need to move through Ray Data."""
        return all(op.action == "decide" for op in self.operations) and not self.needs_pixels

    @property
    def needs_gpu(self) -> bool:
        return any(op.spec.resources.num_gpus > 0 for op in self.operations)

    @property
    def pixel_rows(self) -> str:
        """Which rows need their image bytes in this stage: ``all`` if a pixel step sees all rows."""
        return "all" if any(op.entry.needs_pixels and op.rows == "all" for op in self.operations) else "kept"

    @property
    def barrier_fingerprint(self) -> str | None:
        if self.barrier is None:
            return None
        return _digest({"stage": self.fingerprint, "barrier": _step_identity(self.barrier.spec)})

    @property
    def cache_name(self) -> str:
        return f"stage{self.index}-{self.fingerprint[:16]}"

    @property
    def barrier_cache_name(self) -> str | None:
        fp = self.barrier_fingerprint
        return None if fp is None else f"barrier{self.index}-{self.barrier.step_id}-{fp[:16]}"


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    stages: tuple[Stage, ...]
    layout_writes_images: bool
    step_ids: tuple[str, ...] = field(default=())
    step_rows: tuple[tuple[str, str], ...] = field(default=())  # (step id, rows) in recipe order

    @property
    def runs_per_shard_only(self) -> bool:
        """Whether every stage runs one task per shard (no actor pools, no Ray Data): such a plan runs
        in the driver's threads unless a Ray cluster is named (``curate.shard_tasks``)."""
        return all(stage.runs_per_shard for stage in self.stages)

    @property
    def needs_gpu(self) -> bool:
        """Whether a step asks for a GPU: only Ray schedules GPUs, so such a plan always runs on Ray."""
        return any(stage.needs_gpu for stage in self.stages)

    @property
    def global_operations(self) -> list[Operation]:
        return [s.barrier for s in self.stages if s.barrier is not None]

    @property
    def changed_columns(self) -> tuple[str, ...]:
        """The existing columns some step of the plan may change (``StepEntry.modifies``): the output
        never leaves those in the source (``output.source_columns``)."""
        return tuple(sorted({c for stage in self.stages for op in stage.operations for c in op.entry.modifies}))

    @property
    def columns_named_by_steps(self) -> tuple[str, ...]:
        """The columns steps read by name (their ``*_column`` params, defaults included). A step reads
        an array of the source (DataComp's ``l14_img``) only by naming it: stage 0 reads and stores
        the named ones (a barrier's SQL reads them from stored stage outputs), the others stay in the source."""
        names: set[str] = set()
        for spec in self.recipe.steps:
            params = get_step(spec.name).params_model(**spec.params)
            for key, value in params.model_dump().items():
                if key.endswith("_column") and isinstance(value, str):
                    names.add(value)
        return tuple(sorted(names))

    @property
    def first_stage_stores(self) -> tuple[str, ...] | None:
        """The source's columns that stage 0 stores besides the keys, the bookkeeping and what its
        steps add or change: those named by steps and those every barrier's SQL reads
        (``StepEntry.state_columns``). The source's other columns stay in the source, whose reader
        reads them again when a later stage or the sink needs them (``projects_columns``: it reads
        columns alone, so a stage 0 without steps reads only these); storing them would copy the
        source. None (store every column) when a barrier does not say what it reads, or the input's
        reader does not project."""
        fmt = self.recipe.input.format
        # auto: each shard's reader is asked (``projects_columns``); a url pool never projects
        projects = fmt == "auto" if fmt in SPECIAL_INPUT_FORMATS else hasattr(get_reader(fmt).cls, "read_columns")
        if not projects:
            return None
        reads = set(self.columns_named_by_steps)
        for op in self.global_operations:
            columns = op.entry.state_columns(op.entry.params_model(**op.spec.params))
            if columns is None:
                return None
            reads.update(columns)
        return tuple(sorted(reads))

    def describe(self) -> str:
        lines = [
            f"plan of {self.recipe.name!r}: {len(self.stages)} stage(s), output layout {self.recipe.output.layout}"
        ]
        for stage in self.stages:
            reads = "source shards (pixels)" if stage.index == 0 or stage.needs_pixels else "stage outputs"
            if stage.index and stage.needs_pixels:
                reads = f"stage outputs + image bytes by range ({stage.pixel_rows} rows)"
            if stage.index and self.first_stage_stores is not None:
                reads += " + the source shards again (any columns stage 0 left there)"
            how = "one task per shard" if stage.runs_per_shard else "a Ray Data pass, an actor pool per step"
            if not stage.runs_per_shard and not self.needs_gpu:
                how += " (one task per shard in local processes when no cluster is named)"
            lines.append(f"stage {stage.index} ({stage.cache_name}): {how}; reads {reads}")
            for op in stage.operations:
                lines.append(f"  - {op.describe()}")
            if not stage.operations:
                lines.append("  - (no steps: the input as read)")
            writes = "per shard: a Parquet of the columns it added, then a done-marker"
            stored = self.first_stage_stores if stage.index == 0 else None
            if stored is not None:
                added = ["what its steps add or change"] if stage.operations else []
                kept = ", ".join(["keys", "bookkeeping", *added, *stored])
                where = "the rest stays in the source"
                if self.recipe.input.format == "auto":
                    where += " if its reader reads columns alone, as DataComp's does; else every column"
                writes = f"per shard: a Parquet of {kept} ({where}), then a done-marker"
            lines.append(f"  writes {writes}")
            if stage.barrier is not None:
                lines.append(
                    f"barrier {stage.barrier.step_id}: global_state over stages 0..{stage.index} "
                    f"(DuckDB view `staged`), cached as {stage.barrier_cache_name}"
                )
        sink = "tar + parquet + _stats.json per shard" if self.layout_writes_images else "parquet + _stats.json"
        where = "Ray tasks"
        if self.runs_per_shard_only:
            where = "threads of this process (Ray tasks if a cluster is named: no stage needs Ray)"
        elif not self.needs_gpu:
            where = "Ray tasks (the local processes' tasks when no cluster is named: no step asks for a GPU)"
        lines.append(f"sink ({self.recipe.output.layout}): {where} write {sink}, then its done-marker")
        return "\n".join(lines)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _step_identity(spec: StepSpec) -> dict:
    """What of a step determines its output: name, id, params and rows; not its Ray resources."""
    return {"name": spec.name, "id": spec.step_id, "params": spec.params, "rows": spec.sees}


def input_fingerprint(recipe: Recipe, shard_paths: list[str]) -> dict:
    return {"input": recipe.input.model_dump(exclude={"path"}), "shards": shard_paths}


def compile_plan(recipe: Recipe, shard_paths: list[str] | None = None) -> Plan:
    """Cut the recipe at each global step; ``shard_paths`` go into the stage fingerprints (without
    them, as for ``curate plan``, the fingerprints cover the recipe alone)."""
    base = input_fingerprint(recipe, list(shard_paths or []))
    groups: list[tuple[list[Operation], Operation | None]] = []
    current: list[Operation] = []
    for spec in recipe.steps:
        entry = get_step(spec.name)
        if not entry.global_decision:
            current.append(Operation(spec, entry, "call", spec.sees))
            continue
        if entry.annotates_in_stream:
            current.append(Operation(spec, entry, "call", spec.sees))
        barrier = Operation(spec, entry, "decide", spec.sees)
        groups.append((current, barrier))
        current = [barrier]  # its decisions apply first in the next stage's workers
    groups.append((current, None))

    stages = []
    covered: list[dict] = []
    for index, (operations, barrier) in enumerate(groups):
        covered.extend({"op": op.action, **_step_identity(op.spec)} for op in operations)
        fingerprint = _digest({**base, "through": covered})
        stages.append(Stage(index, tuple(operations), barrier, fingerprint, is_last=index == len(groups) - 1))
    return Plan(
        recipe=recipe,
        stages=tuple(stages),
        layout_writes_images=get_layout(recipe.output.layout).writes_images,
        step_ids=tuple(s.step_id for s in recipe.steps),
        step_rows=tuple((s.step_id, s.sees) for s in recipe.steps),
    )
