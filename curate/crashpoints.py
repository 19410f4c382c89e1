"""Named points where a test can kill the run (SIGKILL), to prove resume is exact.

``CURATE_CRASH_AT=name:n`` kills the run the n-th time any process of it passes ``name`` (n
defaults to 1). The driver reads the variable; Ray tasks get it as a ``CrashPlan`` argument
(workers do not share the driver's environment), count their passes in files beside the run,
and kill the driver first, then themselves: the whole run dies at that point, as if the machine
went down. Unset, a crash point costs one dict lookup. Names are listed in ``CRASH_POINTS``.

``CURATE_CRASH_AT=name:n:hold`` instead stops the process that makes the n-th pass there for good
(it writes ``held-name`` in the counter folder and sleeps), while the rest of the run goes on; only
points passed in Ray tasks can hold. A
test then kills the run from outside at a moment it knows is mid-run (the held work can never
finish), without waiting on the clock.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CRASH_POINTS = (
    "part_written",  # a worker stored a batch's rows as a part; its shard is unfinished
    "part_tallied",  # the driver recorded a batch's parts; shards may be unfinished
    "stage_written",  # a stage's output of one shard is written, with its marker
    "barrier_saved",  # a barrier's global state is saved; the next stage has not started
    "shard_files_written",  # a shard's final files are written under temporary names
    "shard_renamed",  # a shard's final files are renamed into place; its done-marker is not written
    "before_run_summary",  # every shard is done; sizes.json, stats and catalog are not written
)


_driver_hits: dict[str, int] = {}


@dataclass(frozen=True)
class CrashPlan:
    """What a Ray task needs to honour ``CURATE_CRASH_AT`` of the driver that started it."""

    spec: str | None
    driver_pid: int
    counter_dir: str

    @classmethod
    def from_env(cls, counter_dir: Path) -> CrashPlan:
        return cls(os.environ.get("CURATE_CRASH_AT") or None, os.getpid(), str(counter_dir))


CRASH_ACTIONS = ("kill", "hold")


def _target(spec: str | None, name: str) -> tuple[int, str] | None:
    """(pass count, action) when ``spec`` names this point."""
    if not spec:
        return None
    target, _, rest = spec.partition(":")
    if target != name:
        return None
    count, _, action = rest.partition(":")
    action = action or "kill"
    if action not in CRASH_ACTIONS:
        raise ValueError(f"CURATE_CRASH_AT: action {action!r} is not one of {CRASH_ACTIONS}")
    return int(count or 1), action


def _hold_forever(counter_dir: str, name: str) -> None:
    Path(counter_dir).mkdir(parents=True, exist_ok=True)
    Path(counter_dir, f"held-{name}").touch()
    while True:  # until the test kills the run
        time.sleep(3600)


def _passes(counter_dir: str, name: str) -> int:
    """Count one pass in a file shared by every process of the run (appends are atomic)."""
    Path(counter_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.join(counter_dir, f"crash-{name}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    return os.path.getsize(path)


def crash_point(name: str, plan: CrashPlan | None = None) -> None:
    """In the driver: ``crash_point(name)``; in a Ray task: ``crash_point(name, plan)``."""
    spec = plan.spec if plan is not None else os.environ.get("CURATE_CRASH_AT")
    target = _target(spec, name)
    if target is None:
        return
    count, action = target
    if plan is None:  # the driver: one process, counted in memory
        if action == "hold":  # held work must be the workers': the driver would stop the whole run
            raise ValueError(f"CURATE_CRASH_AT: {name} is passed in the driver, where 'hold' does not apply")
        _driver_hits[name] = _driver_hits.get(name, 0) + 1
        if _driver_hits[name] >= count:
            os.kill(os.getpid(), signal.SIGKILL)
        return
    passes = _passes(plan.counter_dir, name)
    if passes == count and action == "hold":
        _hold_forever(plan.counter_dir, name)
    if passes >= count and action == "kill":
        os.kill(plan.driver_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
