"""``curate status RUN``: where a run stands, read from its own markers, for a run that is running,
finished, failed or was killed.

What a re-run redoes follows the runner's rules (``curate.runner``): a stage computes a shard that
has no marker in the stage's cache folder, or whose earlier stage it depends on is computed again;
a stage whose marker lists rows to retry computes those rows; and when any shard of a stage before
a barrier is computed again, the barrier's state changes, so every shard of every later stage is
computed again too. Final shards are written for shards without a done-marker in ``_done/`` and for
every shard whose last stage is computed again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import yaml

from curate.rundir import RunDir, RunFolderError
from curate.stage_store import StageStore
from curate.stats import merge_counters


@dataclass
class StageStatus:
    index: int
    label: str
    cache: str
    done: int
    total: int
    rows_to_retry: int
    parts_in_flight: int  # row files an interrupted attempt left (a re-run does not compute those rows again)
    to_compute: list[int] = field(default_factory=list)  # shard indexes a re-run computes in this stage
    barrier: str | None = None
    barrier_done: bool = False


@dataclass
class RunStatus:
    root: str  # the run folder (a path, or a URL)
    recipe: str
    state: str  # running | finished | failed | interrupted | not started
    holder: str | None
    shards: int
    final_done: int
    stages: list[StageStatus]
    final_to_write: list[int]
    counters: dict
    last_error: str | None
    note: str | None = None  # why the plan could not be followed (input shards not reachable)
    current_stage: str | None = None  # the stage a running run is in (run_state.json)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "stages"}
        out["root"] = str(self.root)
        out["stages"] = [s.__dict__ for s in self.stages]
        return out


def _load_recipe(run: RunDir):
    from curate.config import validate_recipe

    if not run.storage.exists("run.json") or not run.storage.exists("recipe.yaml"):
        raise RunFolderError(f"{run.url} is not a curate run folder (no run.json / recipe.yaml)")
    return validate_recipe(yaml.safe_load(run.storage.read_bytes("recipe.yaml")))


def _plan_and_shards(recipe, run: RunDir):
    from curate.plan import compile_plan
    from curate.runner import resolve_shards, shard_identities

    if recipe.input.format == "urls":
        from curate.readers.base import list_shards

        return compile_plan(recipe, [recipe.input.path]), list_shards(f"{run.download}/*.tar", "img2dataset")
    shards = resolve_shards(recipe, run)
    return compile_plan(recipe, shard_identities(shards)), shards


def _state(run: RunDir, holder: str | None) -> str:
    recorded = run.read_state().get("state")
    if holder is not None:
        return "running"
    if recorded == "running":
        return "interrupted"
    if recorded is None:
        return "finished" if run.storage.exists("stats.json") else "interrupted"
    return recorded


def run_status(root: str | os.PathLike) -> RunStatus:
    from curate.executor import stage_label

    run = RunDir(root)
    recipe = _load_recipe(run)
    holder = run.lock_holder()
    recorded = run.read_state()
    markers = run.read_markers()
    status = RunStatus(
        root=run.url,
        recipe=recipe.name,
        state=_state(run, holder),
        holder=holder,
        shards=0,
        final_done=len(markers),
        stages=[],
        final_to_write=[],
        counters=merge_counters(markers),
        last_error=recorded.get("error"),
    )
    if status.state == "running":
        status.current_stage = recorded.get("stage_label")
    try:
        plan, shards = _plan_and_shards(recipe, run)
    except Exception as exc:  # the input moved or is unreachable: the markers still tell what is done
        status.note = f"the input shards could not be listed ({exc}); stages are not shown"
        return status
    status.shards = len(shards)
    indexes = [s.index for s in shards]
    redo_below: set[int] = set()  # shards an earlier stage computes again (so this one does too)
    everything = False  # an earlier barrier's state changes: every later shard is computed again
    for stage in plan.stages:
        store = StageStore(run.cache_storage, stage.cache_name)
        marks = {i: store.read_marker(i) for i in indexes}
        retry = sum(len(m.get("retry") or []) for m in marks.values() if m)
        to_compute = [
            i for i in indexes if everything or i in redo_below or marks[i] is None or (marks[i].get("retry") or [])
        ]
        entry = StageStatus(
            index=stage.index,
            label=stage_label(stage),
            cache=store.name,
            done=sum(m is not None for m in marks.values()),
            total=len(indexes),
            rows_to_retry=retry,
            parts_in_flight=store.parts_in_flight(),
            to_compute=to_compute,
        )
        if stage.barrier is not None:
            entry.barrier = stage.barrier.step_id
            entry.barrier_done = StageStore(run.cache_storage, stage.barrier_cache_name).storage.exists("state.json")
            everything = everything or bool(to_compute) or not entry.barrier_done
        redo_below |= set(to_compute)
        status.stages.append(entry)
    status.final_to_write = [i for i in indexes if i in redo_below or not run.is_done(i)]
    return status


def describe(status: RunStatus) -> list[str]:
    """The status as lines for a terminal."""
    held = f" (pid {status.holder} holds the folder now)" if status.holder else " (no curate process holds it)"
    lines = [
        f"run {status.root}: recipe {status.recipe!r}, {status.state}{held}",
        f"final shards: {status.final_done} of {status.shards or '?'} done",
    ]
    if status.current_stage:
        lines.append(f"now running {status.current_stage}")
    for s in status.stages:
        flight = f", {s.parts_in_flight} part file(s) of an interrupted attempt" if s.parts_in_flight else ""
        retry = f", {s.rows_to_retry} row(s) to retry" if s.rows_to_retry else ""
        lines.append(f"  {s.label}: {s.done}/{s.total} shards stored in {s.cache}{retry}{flight}")
        if s.barrier is not None:
            lines.append(f"    barrier {s.barrier}: state {'computed' if s.barrier_done else 'not computed yet'}")
    if status.note:
        lines.append(status.note)
    elif status.state != "running":
        redo = [f"stage {s.index}: shards {_ranges(s.to_compute)}" for s in status.stages if s.to_compute]
        if redo or status.final_to_write:
            lines.append("a re-run of the same command will compute " + ("; ".join(redo) or "no stage"))
            lines.append(f"  and write final shards {_ranges(status.final_to_write) or 'none'}")
        else:
            lines.append("a re-run of the same command has nothing to compute")
    failed = {
        f"{step}: {reason}": n for step, c in status.counters["steps"].items() for reason, n in c["failed"].items()
    }
    if failed:
        lines.append("failures (in finished shards): " + ", ".join(f"{k} {v}" for k, v in sorted(failed.items())))
    if status.last_error:
        lines.append(f"last error: {status.last_error}")
    return lines


def _ranges(indexes: list[int]) -> str:
    """0,1,2,5 -> '0-2, 5'."""
    out, start = [], None
    for i, value in enumerate(indexes):
        if start is None:
            start = value
        if i + 1 == len(indexes) or indexes[i + 1] != value + 1:
            out.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(out)


def status_json(status: RunStatus) -> str:
    return json.dumps(status.to_json(), indent=2, default=str)
