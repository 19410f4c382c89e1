"""The run folder: its layout, its lock, its recipe fingerprint and its done-markers.

Layout of ``run/``::

    run.json            recipe fingerprint and inputs (a different recipe is refused)
    recipe.yaml         the resolved recipe this run executes
    shards/             NNNNNNNN.tar + NNNNNNNN.parquet + NNNNNNNN_stats.json, sizes.json
    _done/NNNNNNNN.json a shard's counters; written last, it is what says the shard is done
    _tmp/               crash-point counters of tests; emptied whenever a run starts
    _cache/             stage outputs, parts in flight and barrier states, by fingerprint (kept by --overwrite)
    run_state.json      what the last invocation is doing or did: running (stage), finished, failed (error)
    stats.json, shards.parquet, steps.parquet, catalog.duckdb   written when every shard is done
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml

from curate.run_storage import RunStorage, RunStorageError
from schemas.recipe import Recipe
from schemas.tables import RETRYABLE_STATUSES


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run; the message says why and what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write under a unique temporary name and rename, so that two writers never interleave."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.storage = RunStorage(str(self.root))
        self.cache_storage = self.storage.child("_cache")  # what stage stores live in (``StageStore``)
        self.shards = self.root / "shards"
        self.done = self.root / "_done"
        self.tmp = self.root / "_tmp"
        self.download = self.root / "_download"
        self.chunks = self.root / "_chunks"  # per input shard: its chunks, before bucket sharding
        self.catalog = self.root / "catalog.duckdb"
        self.stats = self.root / "stats.json"
        self.cache = self.root / "_cache"  # stage outputs and barrier states, by fingerprint
        self.artifacts = self.root / "artifacts"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder exclusively (``RunStorage.hold``: locally an ``fcntl`` lock, which the
        OS drops if the process is killed)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(RunStorage(str(self.root)).hold())
            except RunStorageError as e:
                raise RunFolderError(str(e)) from None
            yield

    def lock_holder(self) -> str | None:
        """The pid of the curate process that holds the run folder now, or None when none does."""
        path = self.root / ".lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @property
    def state_path(self) -> Path:
        return self.root / "run_state.json"

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}

    def write_state(self, state: str, **fields) -> None:
        """Record what this invocation is doing (``curate status`` reads it); ``running`` left behind
        by a process that no longer holds the lock means the run was interrupted."""
        entry = {**self.read_state(), "state": state, "pid": os.getpid(), "host": socket.gethostname()}
        entry.update(fields, updated=time.time())
        atomic_write_text(self.state_path, json.dumps(entry, indent=2))

    def record_error(self, exc: BaseException) -> None:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self.write_state("failed", error=f"{type(exc).__name__}: {exc}", traceback="".join(lines)[-4000:])

    def prepare(self, recipe: Recipe, fingerprint: str, *, overwrite: bool) -> bool:
        """Create or reopen the run folder; returns True when resuming an earlier run."""
        info_path = self.root / "run.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if info.get("fingerprint") == fingerprint:
                self._clear_tmp()
                return True
            if not overwrite:
                raise RunFolderError(
                    f"output folder {self.root} holds a run of a different recipe or input "
                    f"(recipe {info.get('recipe')!r}); pass --overwrite to replace its output (stages that did not "
                    "change are reused from its cache), or choose another --output"
                )
            self._wipe()
        elif any(p.name != ".lock" for p in self.root.iterdir()) and not overwrite:
            raise RunFolderError(
                f"output folder {self.root} is not empty and is not a curate run; "
                "choose an empty folder or pass --overwrite"
            )
        elif overwrite:
            self._wipe()
        for d in (self.shards, self.done, self.tmp, self.chunks):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        # run.json last: its presence says the folder is initialised for this fingerprint.
        atomic_write_text(info_path, json.dumps({"fingerprint": fingerprint, "recipe": recipe.name}, indent=2))
        return False

    def _wipe(self) -> None:
        """Remove the run's output; the stage cache stays (its folders are keyed by fingerprint)."""
        for child in self.root.iterdir():
            if child.name in (".lock", self.cache.name):
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _clear_tmp(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for d in (self.shards, self.done, self.tmp, self.chunks):
            d.mkdir(parents=True, exist_ok=True)
        for stale in [*self.shards.glob(".*.tmp"), *self.chunks.glob(".*.tmp"), *self.root.glob(".*.tmp")]:
            stale.unlink(missing_ok=True)

    @staticmethod
    def marker_name(shard_index: int) -> str:
        return f"_done/{shard_index:08d}.json"

    def marker(self, shard_index: int) -> Path:
        return self.root / self.marker_name(shard_index)

    def is_done(self, shard_index: int) -> bool:
        return self.marker(shard_index).exists()

    def has_retryable_rows(self) -> bool:
        """Whether a finished shard holds rows failed with a retryable status (a re-run retries them)."""
        return any(set(m["status"]) & set(RETRYABLE_STATUSES) for m in self.read_markers())

    def read_markers(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.done.glob("*.json"))]
