"""Where a stage's per-shard tasks run: Ray tasks, or threads of the driver when the plan needs no Ray.

A plan whose every stage runs one task per shard (global decisions over metadata, e.g. a CLIP-score
fraction of DataComp metadata) has no model to keep warm and no rows to move between processes:
each task reads a shard's Parquet, applies Arrow kernels and writes Parquet, all of which release
the GIL. Starting Ray for it (seconds, and a worker process per core importing curate) costs more
than the work, so such a plan runs on a thread pool of the driver instead, unless the recipe names
a Ray cluster (``ray.address`` or ``RAY_ADDRESS``): on a cluster the tasks belong next to the data.

Both pools take the same calls, so the executor does not know which one it has:

    pool.submit(fn, *args, num_cpus=...) -> handle
    pool.finished(handles, wait=...)     -> (results of the ended ones, the handles still running)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Protocol

# A task whose worker died (a node lost, a process killed) is run again this many times by Ray.
RAY_TASK_RETRIES = 2


class ShardTasks(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any, num_cpus: float) -> Any: ...

    def finished(self, running: list, *, wait: bool) -> tuple[list[Any], list]: ...

    def close(self) -> None: ...


class RayShardTasks:
    """One Ray task per call; a task's error is raised by ``finished``."""

    def __init__(self) -> None:
        self._remotes: dict[tuple[Callable, float], Any] = {}

    def submit(self, fn: Callable[..., Any], *args: Any, num_cpus: float) -> Any:
        import ray

        key = (fn, num_cpus)
        if key not in self._remotes:
            self._remotes[key] = ray.remote(num_cpus=num_cpus, max_retries=RAY_TASK_RETRIES)(fn)
        return self._remotes[key].remote(*args)

    def finished(self, running: list, *, wait: bool) -> tuple[list[Any], list]:
        import ray

        if not running:
            return [], running
        ready, running = ray.wait(running, num_returns=1 if wait else len(running), timeout=None if wait else 0)
        return [ray.get(ref) for ref in ready], running

    def close(self) -> None:
        pass


class LocalShardTasks:
    """A thread pool of the driver, one thread per CPU; a task's error is raised by ``finished``."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="curate-shard")

    def submit(self, fn: Callable[..., Any], *args: Any, num_cpus: float) -> Future:
        return self._pool.submit(fn, *args)

    def finished(self, running: list, *, wait: bool) -> tuple[list[Any], list]:
        if not running:
            return [], running
        done, pending = wait_futures(running, timeout=None if wait else 0, return_when=FIRST_COMPLETED)
        ended = [f for f in running if f in done]  # in submission order, so logs read in shard order
        return [f.result() for f in ended], [f for f in running if f in pending]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def ray_address_named(address: str | None) -> bool:
    """Whether the run is to use a Ray cluster: the recipe's ``ray.address`` or ``RAY_ADDRESS``."""
    return bool(address or os.environ.get("RAY_ADDRESS"))
