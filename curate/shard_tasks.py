"""Where a stage's per-shard tasks run: Ray tasks, or a local pool when the plan needs no Ray.

Ray earns its start (seconds, a worker process per core importing curate, an actor pool per step)
when there is a cluster to spread over or a GPU to schedule. On one machine without a GPU step it
costs more than the work of most runs, so a run that names no cluster (``ray.address`` or
``RAY_ADDRESS``) and has no step asking for a GPU runs without Ray, every stage as one task per
shard in a local pool:

* threads of the driver, when every stage only applies global decisions (a CLIP-score fraction of
  DataComp metadata): each task reads a shard's Parquet, applies Arrow kernels and writes Parquet,
  all of which release the GIL;
* processes otherwise (a step's per-row Python and its models hold the GIL): one per CPU
  (``ray.num_cpus`` caps them) divided by the largest ``num_cpus`` a step asks for, each building
  a step once and keeping it for the shards it runs, as an actor would. Like Ray's workers they see
  no GPU and use as many threads as the CPUs of their share, and they die with the driver: Linux's
  ``PR_SET_PDEATHSIG``, so elsewhere (macOS) such a plan runs on a local Ray, as it did before.

Both pools take the same calls, so the executor does not know which one it has:

    pool.submit(fn, *args, num_cpus=...) -> handle
    pool.finished(handles, wait=...)     -> (results of the ended ones, the handles still running)
    pool.results(handles)                -> every result, in the order submitted
    pool.whole_shards                    -> whether per-batch stages also run one task per shard
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Protocol

# A task whose worker died (a node lost, a process killed) is run again this many times by Ray.
RAY_TASK_RETRIES = 2


class ShardTasks(Protocol):
    whole_shards: bool

    def submit(self, fn: Callable[..., Any], *args: Any, num_cpus: float) -> Any: ...

    def finished(self, running: list, *, wait: bool) -> tuple[list[Any], list]: ...

    def results(self, handles: list) -> list[Any]: ...

    def close(self) -> None: ...


class RayShardTasks:
    """One Ray task per call; a task's error is raised by ``finished``."""

    whole_shards = False  # per-batch stages are Ray Data passes

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

    def results(self, handles: list) -> list[Any]:
        """Every task's result, in the order submitted (waiting for them all)."""
        import ray

        return ray.get(handles)

    def close(self) -> None:
        pass


class LocalShardTasks:
    """A local pool, of the driver's threads or of processes; a task's error is raised by ``finished``."""

    whole_shards = True

    def __init__(self, cpus: int | None = None, *, processes: bool = False, task_cpus: float = 1.0) -> None:
        cpus = cpus or os.cpu_count() or 1
        self.processes = processes
        self._pool: Executor
        if processes:
            self.workers = max(1, math.floor(cpus / max(task_cpus, 1.0)))
            threads = max(1, math.floor(cpus / self.workers))
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                # spawn: a fresh interpreter, not a fork of a driver that holds threads and locks
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_local_worker_setup,
                initargs=(os.getpid(), threads),
            )
        else:
            self.workers = cpus
            self._pool = ThreadPoolExecutor(max_workers=cpus, thread_name_prefix="curate-shard")

    def submit(self, fn: Callable[..., Any], *args: Any, num_cpus: float) -> Future:
        return self._pool.submit(fn, *args)

    def finished(self, running: list, *, wait: bool) -> tuple[list[Any], list]:
        if not running:
            return [], running
        done, pending = wait_futures(running, timeout=None if wait else 0, return_when=FIRST_COMPLETED)
        ended = [f for f in running if f in done]  # in submission order, so logs read in shard order
        return [f.result() for f in ended], [f for f in running if f in pending]

    def results(self, handles: list) -> list[Any]:
        """Every task's result, in the order submitted (waiting for them all)."""
        return [f.result() for f in handles]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _local_worker_setup(driver_pid: int, threads: int) -> None:
    """A local worker process: killed with the driver (a killed run leaves nothing writing to its
    folder), no GPU (no step asked for one, as Ray hides them from CPU tasks), and the threads of
    its share of the CPUs for the libraries that start a pool of their own (torch, OpenMP, BLAS)."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != driver_pid:  # the driver died before the call above took effect
        os.kill(os.getpid(), signal.SIGKILL)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)


def local_processes_supported() -> bool:
    """Whether local worker processes can be made to die with the driver (Linux only)."""
    return sys.platform.startswith("linux")


def ray_address_named(address: str | None) -> bool:
    """Whether the run is to use a Ray cluster: the recipe's ``ray.address`` or ``RAY_ADDRESS``."""
    return bool(address or os.environ.get("RAY_ADDRESS"))
