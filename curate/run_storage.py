"""Where a run folder lives: a local path or an object store, behind one interface (fsspec).

A run folder is written by the driver and by Ray tasks on any node, and read back by resumed runs,
``curate query`` and training loaders. On a local (or shared POSIX) filesystem a file is committed
by writing a temporary name and renaming it; an object store has no atomic rename, but an object
becomes visible only once its upload completes, whole, so there a file is committed by its upload.
Either way a reader sees a file whole or not at all, and what says a shard is done is its marker,
written last.

The run's exclusive hold differs too. Locally it is an ``fcntl`` lock, which the OS drops when the
holder dies. An object store has no locks and cannot notice a dead holder, so there the hold is a
lease: an object created only if absent (``If-None-Match: *``), renewed by its holder every
``lease_s / 4`` with a write conditional on the version it last wrote (``If-Match``). Another run
that finds the lease watches it: renewed meanwhile, its holder is alive and the run is refused;
unchanged for ``lease_s``, its holder is dead (killed, its machine gone) and the lease is taken over
by a write conditional on that dead version, so two takers can never both win. No clock is
compared across machines: only the lease's version and the taker's own monotonic clock.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

DEFAULT_LEASE_S = 60.0
LEASE_NAME = ".lease"


class RunStorageError(RuntimeError):
    """The run folder cannot be used: the message says why and what to do."""


class RunStorage:
    """A run folder at ``url`` (a local path, ``file://``, or an object store such as ``s3://``);
    every path argument is relative to its root, with ``/`` separators."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")

    @classmethod
    def _at(cls, fs, root: str) -> RunStorage:
        storage = cls.__new__(cls)
        storage.fs, storage.root, storage.is_local = fs, root, isinstance(fs, LocalFileSystem)
        return storage

    def child(self, rel: str) -> RunStorage:
        """The folder ``rel`` of this one, on the same filesystem (a stage's cache, its parts)."""
        return RunStorage._at(self.fs, self.path(rel))

    def __reduce__(self):
        # Ray tasks get the storage pickled: the filesystem travels by its own pickling (its
        # options, not its connections or listing caches), the root as it is.
        return RunStorage._at, (self.fs, self.root)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunStorage) and (self.url(), self.is_local) == (other.url(), other.is_local)

    def __hash__(self) -> int:
        return hash(self.url())

    def __repr__(self) -> str:
        return f"RunStorage({self.url()!r})"

    @property
    def name(self) -> str:
        return posixpath.basename(self.root)

    def path(self, *parts: str) -> str:
        """The path the filesystem knows (no protocol)."""
        parts = tuple(p for p in parts if p)
        return posixpath.join(self.root, *parts) if parts else self.root

    def url(self, *parts: str) -> str:
        """The path with its protocol, for readers in other processes (DuckDB, Ray tasks)."""
        path = self.path(*parts)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _forget_listing(self, path: str) -> None:
        """Listings an object-store client cached are dropped before a lookup: other processes (Ray
        tasks on any node) write the folder meanwhile, and a stale listing would hide their files."""
        if not self.is_local:
            self.fs.invalidate_cache(path)

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        self._forget_listing(path)
        return self.fs.exists(path)

    def makedirs(self, rel: str = "") -> None:
        """Create a local folder (an object store has no folders: a key's prefix is one)."""
        if self.is_local:
            os.makedirs(self.path(rel), exist_ok=True)

    def read_parquet(self, rel: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        # ParquetFile, not read_table: one file needs no dataset layer (nor its import in a worker).
        if self.is_local:
            return pq.ParquetFile(self.path(rel)).read(columns=columns)
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.ParquetFile(f).read(columns=columns)

    def parquet_schema(self, rel: str):
        import pyarrow.parquet as pq

        return pq.read_schema(self.path(rel), filesystem=None if self.is_local else self.fs)

    def read_arrow(self, rel: str):
        """An Arrow IPC file, memory-mapped when local (parts may hold image bytes)."""
        import pyarrow as pa

        if self.is_local:
            with pa.memory_map(self.path(rel), "r") as source:
                return pa.ipc.open_file(source).read_all()
        return pa.ipc.open_file(pa.BufferReader(self.read_bytes(rel))).read_all()

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Commit ``data`` whole at ``rel``: readers see the old content or the new, never a part."""
        with self.writer(rel) as f:
            f.write(data)

    def write_json(self, rel: str, value) -> None:
        self.write_bytes(rel, json.dumps(value, indent=2).encode())

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[IO[bytes]]:
        """A file to stream into, committed at ``rel`` when the block ends without an error; on an
        error nothing is committed (a local temporary file is removed, an upload is abandoned)."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = posixpath.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return
        f = self.fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            _abandon(f)
            raise
        f.close()  # the upload completes here: only now does the object exist

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        """Names (relative to ``rel``) of the files directly in ``rel`` matching ``pattern``, sorted;
        temporary files of writers in flight are not listed."""
        base = self.path(rel)
        if self.is_local:
            names = fnmatch.filter(os.listdir(base), pattern) if os.path.isdir(base) else []
        else:
            self._forget_listing(base)
            names = [posixpath.basename(p.rstrip("/")) for p in self.fs.glob(posixpath.join(base, pattern))]
        return sorted(n for n in names if not (n.startswith(".") and n.endswith(".tmp")))

    def glob(self, pattern: str) -> list[str]:
        """Names (relative to the root) of the files matching ``pattern`` (``D_*/*.parquet``), sorted."""
        self._forget_listing(self.root)
        found = self.fs.glob(self.path(pattern))
        rel = [posixpath.relpath(p if self.is_local else p.rstrip("/"), self.root) for p in found]
        return sorted(n for n in rel if not (posixpath.basename(n).startswith(".") and n.endswith(".tmp")))

    def put_file(self, local_path: str, rel: str) -> None:
        """Commit a copy of a local file at ``rel``: locally through a temporary name and a rename, to
        an object store as one upload (the object exists once it completes)."""
        if self.is_local:
            with self.writer(rel) as f, open(local_path, "rb") as source:
                shutil.copyfileobj(source, f, 1 << 20)
        else:
            self.fs.put_file(local_path, self.path(rel))

    def put_folder(self, local_dir: str, rel: str) -> None:
        """Commit every file under a local folder at the same names under ``rel``."""
        for parent, _, names in os.walk(local_dir):
            for name in sorted(names):
                path = os.path.join(parent, name)
                self.put_file(path, posixpath.join(rel, os.path.relpath(path, local_dir)))

    def copy_folder(self, src: str, dst: str) -> None:
        """Replace folder ``dst`` with a copy of folder ``src`` (nothing when ``src`` is absent)."""
        self.remove(dst)
        if self.is_local:
            if os.path.isdir(self.path(src)):
                shutil.copytree(self.path(src), self.path(dst))
            return
        self._forget_listing(self.path(src))
        for path in self.fs.find(self.path(src)):
            self.fs.copy(path, self.path(dst, posixpath.relpath(path, self.path(src))))

    def get_file(self, rel: str, local_path: str) -> None:
        self.fs.get_file(self.path(rel), local_path)

    def remove(self, rel: str) -> None:
        """Remove a file or a whole folder; nothing to remove is not an error."""
        path = self.path(rel)
        if self.is_local:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return
        self._forget_listing(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self._forget_listing(path)

    def remove_temporaries(self, rel: str = "") -> None:
        """Remove the temporary files that killed local writers left in ``rel`` (an abandoned
        upload leaves no object)."""
        if not self.is_local:
            return
        base = self.path(rel)
        for name in os.listdir(base) if os.path.isdir(base) else []:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(base, name))

    @contextlib.contextmanager
    def hold(self, lease_s: float = DEFAULT_LEASE_S) -> Iterator[Lease | None]:
        """Hold the run folder exclusively for the block (the local lock, or a lease on an object
        store); a folder held by another live run raises ``RunStorageError``."""
        if self.is_local:
            with _local_lock(self.path()):
                yield None
            return
        lease = Lease(self, lease_s)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()


def _abandon(f) -> None:
    """Drop an unfinished upload so that no object is created from it."""
    discard = getattr(f, "discard", None)
    if discard is not None:
        with contextlib.suppress(Exception):
            discard()
    f.closed = True  # fsspec then skips committing it at garbage collection


@contextlib.contextmanager
def _local_lock(root: str) -> Iterator[None]:
    import fcntl

    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunStorageError(
                f"output folder {root} is in use by another curate run (pid {holder}); "
                "wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


class Lease:
    """The exclusive hold of a run folder on an object store (see the module's docstring)."""

    def __init__(self, storage: RunStorage, lease_s: float):
        if lease_s <= 0:
            raise ValueError(f"lease_s: value {lease_s}: must be > 0")
        self.storage, self.lease_s = storage, float(lease_s)
        self.key = storage.path(LEASE_NAME)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.etag: str | None = None
        self.lost = threading.Event()  # set when another run took the lease over: stop writing
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "lease_s": self.lease_s, "renewed": time.time()}).encode()

    def _current(self) -> tuple[str, dict] | None:
        """The lease object's version and content, or None when there is none."""
        try:
            info = self.storage.fs.info(self.key, refresh=True)
        except FileNotFoundError:
            return None
        try:
            body = json.loads(self.storage.fs.cat_file(self.key))
        except (FileNotFoundError, ValueError):
            body = {}
        return info["ETag"], body

    def acquire(self) -> None:
        fs = self.storage.fs
        watched, deadline = None, None  # the version watched, and until when
        while True:
            try:
                self.etag = fs.pipe_file(self.key, self._body(), mode="create")["ETag"]
                break
            except FileExistsError:
                pass
            seen = self._current()
            if seen is None:
                continue  # released meanwhile: try to create it again
            etag, body = seen
            if deadline is None or etag != watched:
                if deadline is not None:  # it changed while watched: its holder renews it, alive
                    raise RunStorageError(
                        f"output folder {self.storage.url()} is in use by another curate run (pid {body.get('pid')} "
                        f"on {body.get('host')}, which renews its lease); wait for it to finish or choose "
                        "another --output"
                    )
                watched, deadline = etag, time.monotonic() + self.lease_s
            elif time.monotonic() >= deadline:  # unchanged for a whole lease: its holder is dead
                try:
                    self.etag = fs.pipe_file(self.key, self._body(), IfMatch=etag)["ETag"]
                    break
                except OSError:
                    deadline = None  # another run took it over first: watch the new holder
                    continue
            time.sleep(min(1.0, self.lease_s / 8))
        self._renewer = threading.Thread(target=self._renew, name="curate-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.etag = self.storage.fs.pipe_file(self.key, self._body(), IfMatch=self.etag)["ETag"]
            except OSError:
                seen = self._current()
                if seen is None or seen[1].get("token") != self.holder["token"]:
                    self.lost.set()
                    return
                # still ours (an error after the write landed, or before it): renew from its version now
                self.etag = seen[0]

    def check(self) -> None:
        """Raise if another run took the lease over (this run stalled past ``lease_s``)."""
        if self.lost.is_set():
            raise RunStorageError(
                f"output folder {self.storage.url()}: this run's lease was taken over by another run "
                f"(this run did not renew it for {self.lease_s:g} s); stopping so that two runs never write it"
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost.is_set():
            return
        seen = self._current()
        if seen is not None and seen[1].get("token") == self.holder["token"]:
            self.storage.fs.rm_file(self.key)


class StagedFiles:
    """The files of one commit (a finished shard's tar, sidecar, stats, split sets): each is written
    at a local path that ``path`` gives, by any writer (``tarfile``, pyarrow), and ``commit`` puts
    them at their final names in the order they were staged. Locally a staged file sits beside its
    final name and is renamed; for an object store it sits in a scratch folder and is uploaded.
    Whatever was not committed when the block ends is removed."""

    def __init__(self, storage: RunStorage):
        self.storage = storage
        self._staged: list[tuple[str, str]] = []  # (final name, staging path)
        self._scratch = None if storage.is_local else tempfile.mkdtemp(prefix="curate-staged-")

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        for _, staged in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def path(self, rel: str) -> str:
        """A local path to write the file that ``commit`` puts at ``rel``."""
        if self.storage.is_local:
            final = self.storage.path(rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            # The pid names it, so that a shard redone by another process never writes the same file,
            # and what a killed writer left is a temporary file that a new run removes.
            staged = posixpath.join(os.path.dirname(final), f".{os.path.basename(final)}.{os.getpid()}.tmp")
        else:
            staged = os.path.join(self._scratch, f"{len(self._staged):04d}-{posixpath.basename(rel)}")
        self._staged.append((rel, staged))
        return staged

    def commit(self) -> None:
        for rel, staged in self._staged:
            if self.storage.is_local:
                os.replace(staged, self.storage.path(rel))
            else:
                self.storage.put_file(staged, rel)
        self._staged = []
