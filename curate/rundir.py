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
import hashlib
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import yaml

from curate.run_storage import DEFAULT_LEASE_S, LEASE_NAME, RunStorage, RunStorageError
from schemas.recipe import Recipe
from schemas.tables import RETRYABLE_STATUSES

STATE_NAME = "run_state.json"
RUN_FOLDERS = ("shards", "_done", "_tmp", "_chunks")


def lease_seconds() -> float:
    """How long a run on an object store may go without renewing its lease before another run takes
    it over as dead (``CURATE_LEASE_S``, default 60): the wait of a resume after a kill."""
    value = os.environ.get("CURATE_LEASE_S", str(DEFAULT_LEASE_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise RunFolderError(f"CURATE_LEASE_S: value {value!r}: must be a number of seconds > 0")
    return seconds


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run; the message says why and what to do."""


class RunDir:
    """A run folder (a local path, or an object-store URL such as ``s3://bucket/run``). Its files are
    read and written through ``storage``; the ``Path`` attributes name the same files locally, for
    the readers (catalog, report) that still need a local run."""

    def __init__(self, root: str | os.PathLike):
        self.storage = RunStorage(str(root))
        self.cache_storage = self.storage.child("_cache")  # what stage stores live in (``StageStore``)
        self.root = Path(self.storage.root)
        self.shards = self.root / "shards"
        self.tmp = self.root / "_tmp"
        self.download = self.root / "_download"
        self.catalog = self.root / "catalog.duckdb"
        self.stats = self.root / "stats.json"
        self._lease = None  # while this run holds a folder on an object store: its lease

    @property
    def url(self) -> str:
        return self.storage.url()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder exclusively (``RunStorage.hold``: locally an ``fcntl`` lock, which the
        OS drops if the process is killed; on an object store a lease)."""
        with contextlib.ExitStack() as stack:
            try:
                self._lease = stack.enter_context(self.storage.hold(lease_seconds()))
            except RunStorageError as e:
                raise RunFolderError(str(e)) from None
            try:
                yield
            finally:
                self._lease = None

    def check_hold(self) -> None:
        """Raise if this run lost its hold: another run took its lease over (this one stalled past a
        whole lease without renewing it). Called between stages, so two runs never go on writing."""
        if self._lease is not None:
            try:
                self._lease.check()
            except RunStorageError as e:
                raise RunFolderError(str(e)) from None

    def lock_holder(self) -> str | None:
        """Who holds the run folder now (a pid, or a pid and host for a lease), or None when none does."""
        if not self.storage.is_local:
            try:
                lease = self.storage.read_json(LEASE_NAME)
            except FileNotFoundError:
                return None
            # A lease its holder stopped renewing is a dead run's (the clock of another machine is
            # compared here, so only for what ``curate status`` shows, never to take the lease).
            if time.time() - float(lease.get("renewed", 0)) > 2 * float(lease.get("lease_s", DEFAULT_LEASE_S)):
                return None
            return f"{lease.get('pid')} on {lease.get('host')}"
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

    def read_json(self, name: str, default=None):
        """A JSON file of the run folder, or ``default`` when there is none."""
        try:
            return self.storage.read_json(name)
        except FileNotFoundError:
            return default

    def read_state(self) -> dict:
        return self.read_json(STATE_NAME, {})

    def write_state(self, state: str, **fields) -> None:
        """Record what this invocation is doing (``curate status`` reads it); ``running`` left behind
        by a process that no longer holds the lock means the run was interrupted."""
        entry = {**self.read_state(), "state": state, "pid": os.getpid(), "host": socket.gethostname()}
        entry.update(fields, updated=time.time())
        self.storage.write_json(STATE_NAME, entry)

    def record_error(self, exc: BaseException) -> None:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self.write_state("failed", error=f"{type(exc).__name__}: {exc}", traceback="".join(lines)[-4000:])

    def prepare(self, recipe: Recipe, fingerprint: str, *, overwrite: bool) -> bool:
        """Create or reopen the run folder; returns True when resuming an earlier run."""
        info = self.read_json("run.json")
        if info is not None:
            if info.get("fingerprint") == fingerprint:
                self._clear_tmp()
                return True
            if not overwrite:
                raise RunFolderError(
                    f"output folder {self.url} holds a run of a different recipe or input "
                    f"(recipe {info.get('recipe')!r}); pass --overwrite to replace its output (stages that did not "
                    "change are reused from its cache), or choose another --output"
                )
            self._wipe()
        elif self._names() and not overwrite:
            raise RunFolderError(
                f"output folder {self.url} is not empty and is not a curate run; "
                "choose an empty folder or pass --overwrite"
            )
        elif overwrite:
            self._wipe()
        for d in RUN_FOLDERS:
            self.storage.makedirs(d)
        recipe_yaml = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
        self.storage.write_bytes("recipe.yaml", recipe_yaml.encode())
        # run.json last: its presence says the folder is initialised for this fingerprint.
        self.storage.write_json("run.json", {"fingerprint": fingerprint, "recipe": recipe.name})
        return False

    def _names(self) -> list[str]:
        """What the folder holds, but its hold (the lock file, the lease)."""
        return [n for n in self.storage.list() if n not in (".lock", LEASE_NAME)]

    def _wipe(self) -> None:
        """Remove the run's output; the stage cache stays (its folders are keyed by fingerprint)."""
        for name in self._names():
            if name != "_cache":
                self.storage.remove(name)

    @property
    def local_tmp(self) -> Path:
        """A local folder of this run's passing files (crash-point counters of tests): ``_tmp`` in a
        local run folder; for one on an object store, a folder of this machine's temp dir named
        after the run's URL (the processes that share it are this machine's)."""
        if self.storage.is_local:
            return self.tmp
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"curate-run-{digest}"

    def clear_local_tmp(self) -> None:
        shutil.rmtree(self.local_tmp, ignore_errors=True)

    def _clear_tmp(self) -> None:
        self.clear_local_tmp()
        for d in RUN_FOLDERS:
            self.storage.makedirs(d)
        for d in ("shards", "_chunks", ""):
            self.storage.remove_temporaries(d)

    @staticmethod
    def marker_name(shard_index: int) -> str:
        return f"_done/{shard_index:08d}.json"

    def read_marker(self, shard_index: int) -> dict | None:
        return self.read_json(self.marker_name(shard_index))

    def is_done(self, shard_index: int) -> bool:
        return self.storage.exists(self.marker_name(shard_index))

    def has_retryable_rows(self) -> bool:
        """Whether a finished shard holds rows failed with a retryable status (a re-run retries them)."""
        return any(set(m["status"]) & set(RETRYABLE_STATUSES) for m in self.read_markers())

    def read_markers(self) -> list[dict]:
        return [self.storage.read_json(f"_done/{name}") for name in self.storage.list("_done", "*.json")]
