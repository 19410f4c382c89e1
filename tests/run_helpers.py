"""Helpers for tests that run ``curate run`` as a separate process (to kill it) and compare runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

# How long a test waits on a process, a server or a model request before calling it hung. A guard,
# never a bound on speed: on a busy 2-core machine one CLI run can take many minutes.
HANG_GUARD_S = 1200


def start_cli(
    recipe: str,
    pattern: str,
    out: Path,
    ray_address: str | None,
    overrides: list[str] | None = None,
    crash_at: str | None = None,
    progress: bool = False,
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``curate run`` joining the tests' Ray cluster (``ray_address``; None: naming no cluster, as a
    user on one machine runs it), optionally set to SIGKILL itself at a crash point (and with its
    progress lines, if ``progress``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CURATE_CRASH_AT", "RAY_ADDRESS")}
    env.update(env_extra or {})
    if crash_at:
        env["CURATE_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "curate.cli", "run", recipe, "--input", pattern, "--output", str(out)]
    if ray_address is not None:
        cmd += ["--ray-address", ray_address]
    if not progress:
        cmd.append("--no-progress")
    for item in overrides or []:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    """The output of a started CLI run once it exits. One still going after the hang guard is
    killed, and fails the test with what it printed."""
    try:
        return proc.communicate(timeout=HANG_GUARD_S)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(
            f"{' '.join(proc.args[3:5])} still running after {HANG_GUARD_S} s: {out[-3000:]}"
        ) from None


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = start_cli(*args, **kwargs)
    out = finish(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def snapshot(run: Path | str) -> dict:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one (a
    local run folder, or one on an object store, read through the same storage the run wrote)."""
    from curate.rundir import RunDir

    folder = RunDir(run)
    storage = folder.storage
    snap = {"sizes": storage.read_json("shards/sizes.json")}
    for name in storage.list("shards", "*.tar"):
        stem = name.removesuffix(".tar")
        snap[name] = storage.read_bytes(f"shards/{name}")
        table = storage.read_parquet(f"shards/{stem}.parquet", ["uid", "keep", "drop_reason", "output_key"])
        snap[stem + ".parquet"] = table.to_pylist()
    found = storage.fs.find(storage.path(), withdirs=False)
    snap["stray"] = sorted(p for p in found if ".tmp" in p.rsplit("/", 1)[-1])
    snap["tmp_left"] = sorted(str(p) for p in folder.local_tmp.glob("*/*"))
    snap["parts_left"] = storage.glob("_cache/*/_parts/*")
    snap["stats"] = storage.read_json("stats.json")
    return snap


def sample_table(captions: list, statuses: list | None = None, metas: list | None = None):
    """A sample table of one shard with these captions (and statuses / pool metadata), for step tests."""
    from schemas.tables import rows_to_sample_table

    statuses = statuses or ["success"] * len(captions)
    metas = metas or [None] * len(captions)
    rows = [
        {
            "uid": f"{i:032x}",
            "shard_index": 0,
            "row_in_shard": i,
            "shard_rows": len(captions),
            "caption": c,
            "status": s,
            "meta": None if m is None else json.dumps(m),
        }
        for i, (c, s, m) in enumerate(zip(captions, statuses, metas, strict=True))
    ]
    return rows_to_sample_table(rows)


def run_in_process(recipe_name: str, pattern: str, out: Path, overrides: list[str] | None = None):
    """A built-in recipe run in the test process (on the session's Ray), progress bars off."""
    from curate.config import load_recipe
    from curate.runner import run_recipe

    recipe = load_recipe(
        recipe_name, [*(overrides or []), "ray.progress_bars=false"], input_path=pattern, output_path=str(out)
    )
    return run_recipe(recipe)


def write_recipe(folder: Path, recipe: dict) -> Path:
    """``recipe`` as ``<folder>/<name>.yaml``; returns the path."""
    import yaml

    path = folder / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def stored_stage_tables(run: Path, stage: int = 0) -> list:
    """What a killed run had safely stored of a stage: its committed shard outputs and its parts."""
    import pyarrow as pa

    tables = [pq.read_table(p) for p in run.glob(f"_cache/stage{stage}-*/0*.parquet")]
    parts = run.glob(f"_cache/stage{stage}-*/_parts/*/*.arrow")
    return tables + [pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in parts]
