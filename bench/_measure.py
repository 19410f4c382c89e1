"""Run a command and sample the peak memory (PSS) of its whole process tree."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def _tree_pss(proc: psutil.Process) -> int:
    """Proportional set size summed over the tree: shared pages (Ray's object store in /dev/shm,
    shared libraries) are split among the processes that map them instead of counted in each."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total


def run_measured(cmd: list[str], *, env: dict | None = None, interval: float = 0.5) -> dict:
    """Wall seconds and peak memory (PSS summed over the process tree, MiB) of ``cmd``; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    series: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        ps = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                series.append(_tree_pss(ps))
            except psutil.NoSuchProcess:
                return
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    # PSS at each quarter of the run: flat quarters mean memory does not grow with the data.
    quarters = [series[min(len(series) - 1, (len(series) * q) // 4)] / 2**20 for q in (1, 2, 3, 4)] if series else []
    return {"seconds": seconds, "peak_pss_mib": max(series, default=0) / 2**20, "quarters_mib": quarters, "output": out}


BENCH_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def curate_run_command(recipe: str, pattern: str, output: str, overrides: list[str] = ()) -> list[str]:
    """``curate run`` from this interpreter's environment, quiet, with ``--set`` overrides."""
    cmd = [
        str(Path(sys.executable).with_name("curate")),
        "run",
        recipe,
        "--input",
        pattern,
        "--output",
        output,
        "--no-progress",
    ]
    for item in overrides:
        cmd += ["--set", item]
    return cmd
