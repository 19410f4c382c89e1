"""Download a pool given as urls (Parquet or CSV of ``url``, ``caption``, ...) with img2dataset.

The result is img2dataset's WebDataset output (``00000.tar`` + ``00000.parquet`` +
``00000_stats.json``, 5-digit shard names), read later by the tar reader like any other
img2dataset output. Settings that matter for curation:

- ``resize_mode="no"`` with ``skip_reencode=True`` and ``encode_format="jpg"``: a JPEG that
  img2dataset recognises (JFIF/Exif header) is stored byte for byte. Any other format (PNG,
  WebP, GIF, JPEG with an unusual header, images with alpha) is decoded and re-encoded to JPEG
  (quality 95): img2dataset writes every image under one extension. ``sha256`` in the json
  and parquet is always the hash of the bytes as downloaded.
- Bytes that do not decode become ``status="failed_to_resize"`` (img2dataset's name),
  ``error_message="Image decoding error"``; HTTP and network errors ``failed_to_download``.
- ``incremental_mode="incremental"``: a shard is done when its ``_stats.json`` exists (written
  last), so re-running on the same output folder after a kill redoes only unfinished shards.
  The output folder must hold nothing but img2dataset output: a ``.json`` file there whose
  name does not start with a shard number makes img2dataset crash.

img2dataset runs in a child interpreter (``python -c``, calling ``img2dataset.download`` with
keyword arguments): it installs a SIGINT handler that exits with status 0 (only possible from
the main thread), prints to stdout, and spawns processes that re-import ``__main__``. Its
output is forwarded to this module's logger at INFO, one record per line. The child and the
processes it starts are stopped when the caller is interrupted, killed, or exits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import fsspec
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate.readers.base import InputError

logger = logging.getLogger(__name__)

# Columns img2dataset writes itself and refuses in save_additional_columns.
RESERVED_COLUMNS = frozenset(
    {
        "key",
        "caption",
        "url",
        "width",
        "height",
        "original_width",
        "original_height",
        "status",
        "error_message",
        "exif",
        "md5",
        "sha256",
        "sha512",
    }
)
_FORMATS = ((".parquet", "parquet"), (".csv.gz", "csv.gz"), (".csv", "csv"), (".tsv.gz", "tsv.gz"), (".tsv", "tsv"))
_STATS_RE = re.compile(r"^(\d+)_stats\.json$")
# The child runs in its own process group; a thread waits for EOF on stdin, which only comes
# when this process is gone, and then kills the group so that no download outlives its caller.
_CHILD = """import json, os, signal, sys, threading
def _watch():
    sys.stdin.read()
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=_watch, daemon=True).start()
from img2dataset import download
download(**json.loads(sys.argv[1]))
"""
_CHILD_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TQDM_DISABLE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
}


class DownloadError(RuntimeError):
    """img2dataset failed, or left shards unfinished (re-running resumes them)."""


def input_format_of(path: str) -> str:
    lower = path.lower()
    for suffix, fmt in _FORMATS:
        if lower.endswith(suffix):
            return fmt
    raise InputError(f"input.path: url pool {path!r} must end with one of {[s for s, _ in _FORMATS]}")


def pool_columns(path: str, fmt: str) -> tuple[list[str], int | None]:
    """Column names of the url pool and, for Parquet, its row count (from the footer)."""
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            if fmt == "parquet":
                meta = pq.ParquetFile(f).metadata
                return meta.schema.to_arrow_schema().names, meta.num_rows
            delimiter = "\t" if fmt.startswith("tsv") else ","
            reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(delimiter=delimiter))
            return reader.schema.names, None
    except FileNotFoundError as exc:
        raise InputError(f"input.path: url pool {path!r} does not exist") from exc
    except Exception as exc:  # any parse failure means the same thing to the user
        raise InputError(f"input.path: url pool {path!r} cannot be read as {fmt}: {exc}") from exc


def _check_output_dir(output_dir: str) -> None:
    fs, root = fsspec.core.url_to_fs(output_dir)
    if not fs.exists(root):
        return
    for p in fs.glob(root.rstrip("/") + "/*.json"):
        name = p.rsplit("/", 1)[-1]
        if not _STATS_RE.match(name):
            raise InputError(
                f"download folder {output_dir!r} holds {name!r}; img2dataset's incremental mode "
                "reads every .json there as a shard's stats: use a folder of its own"
            )


def finished_shards(output_dir: str) -> list[str]:
    """Names (``00000``) of the shards img2dataset finished: stats json and tar both present."""
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    tars = {p.rsplit("/", 1)[-1][: -len(".tar")] for p in fs.glob(root + "/*.tar")}
    names = []
    for p in fs.glob(root + "/*_stats.json"):
        m = _STATS_RE.match(p.rsplit("/", 1)[-1])
        if m and m.group(1) in tars:
            names.append(m.group(1))
    return sorted(names, key=lambda s: (int(s), s))


def shard_pattern(output_dir: str, names: list[str]) -> str:
    """A brace pattern naming exactly these shards: ``dir/{00000..00012}.tar`` when contiguous."""
    base = output_dir.rstrip("/")
    if len(names) == 1:
        return f"{base}/{names[0]}.tar"
    ints = [int(n) for n in names]
    same_width = len({len(n) for n in names}) == 1
    if same_width and ints == list(range(ints[0], ints[0] + len(ints))):
        return f"{base}/{{{names[0]}..{names[-1]}}}.tar"
    return f"{base}/{{{','.join(names)}}}.tar"


def _run_child(kwargs: dict) -> None:
    env = {**os.environ, **_CHILD_ENV}
    tail: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(kwargs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            for part in line.replace("\r", "\n").splitlines():
                if part.strip():
                    logger.info("img2dataset: %s", part.rstrip())
                    tail = (tail + [part.rstrip()])[-20:]
        rc = proc.wait()
    except BaseException:
        _stop_group(proc)
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    if rc != 0:
        raise DownloadError(f"img2dataset exited with status {rc}; last output:\n" + "\n".join(tail))


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop img2dataset and the processes it spawned (its own process group)."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is not None:
            return


def download_kwargs(
    input_path: str,
    output_dir: str,
    *,
    url_col: str = "url",
    caption_col: str = "caption",
    processes: int = 1,
    threads: int = 16,
    timeout: int = 10,
    retries: int = 0,
    samples_per_shard: int = 10000,
    extra_columns: list[str] | None = None,
) -> tuple[dict[str, Any], int | None]:
    """Validate the pool and build ``img2dataset.download``'s arguments; also the pool's row count
    when cheap to know (Parquet). Raises ``InputError`` for a pool that cannot be downloaded."""
    fmt = input_format_of(input_path)
    columns, num_rows = pool_columns(input_path, fmt)
    if url_col not in columns:
        raise InputError(f"input.path: url pool {input_path!r} has no url column {url_col!r}; columns: {columns}")
    if num_rows == 0:
        raise InputError(f"input.path: url pool {input_path!r} has no rows")
    caption: str | None = caption_col
    if caption_col not in columns:
        logger.warning("%s: no caption column %r; captions will be empty", input_path, caption_col)
        caption = None
    save: list[str] = ["uid"] if "uid" in columns and "uid" not in (url_col, caption_col) else []
    for name in extra_columns or []:
        if name not in columns:
            raise InputError(f"extra column {name!r} is not in url pool {input_path!r}; columns: {columns}")
        if name in RESERVED_COLUMNS or name in (url_col, caption_col):
            raise InputError(f"extra column {name!r} is written by img2dataset itself; rename it in the pool")
        if name not in save:
            save.append(name)
    kwargs: dict[str, Any] = dict(
        url_list=input_path,
        output_folder=output_dir,
        input_format=fmt,
        output_format="webdataset",
        url_col=url_col,
        caption_col=caption,
        save_additional_columns=save or None,
        processes_count=processes,
        thread_count=threads,
        timeout=timeout,
        retries=retries,
        number_sample_per_shard=samples_per_shard,
        resize_mode="no",
        skip_reencode=True,
        encode_format="jpg",
        compute_hash="sha256",
        incremental_mode="incremental",
        distributor="multiprocessing",
        enable_wandb=False,
    )
    return kwargs, num_rows


def download_url_pool(
    input_path: str,
    output_dir: str,
    *,
    url_col: str = "url",
    caption_col: str = "caption",
    processes: int = 1,
    threads: int = 16,
    timeout: int = 10,
    retries: int = 0,
    samples_per_shard: int = 10000,
    extra_columns: list[str] | None = None,
) -> str:
    """Download the pool's images into img2dataset WebDataset shards under ``output_dir``.

    Resumable: run again on the same ``output_dir`` after a kill and only unfinished shards are
    downloaded (nothing at all, without starting img2dataset, when a Parquet pool is complete).
    Returns a brace pattern of the finished tars (``list_shards`` expands it). Raises
    ``InputError`` for a pool that cannot be downloaded as asked and ``DownloadError`` when
    img2dataset fails or leaves shards unfinished.
    """
    kwargs, num_rows = download_kwargs(
        input_path,
        output_dir,
        url_col=url_col,
        caption_col=caption_col,
        processes=processes,
        threads=threads,
        timeout=timeout,
        retries=retries,
        samples_per_shard=samples_per_shard,
        extra_columns=extra_columns,
    )
    _check_output_dir(output_dir)
    expected = None if num_rows is None else math.ceil(num_rows / samples_per_shard)
    before = set(finished_shards(output_dir))
    if expected is not None and len(before) >= expected:
        logger.info("url pool %s: all %d shards already in %s", input_path, expected, output_dir)
    else:
        logger.info(
            "downloading url pool %s into %s (%s rows, %d per shard, %d shards already done)",
            input_path,
            output_dir,
            "?" if num_rows is None else num_rows,
            samples_per_shard,
            len(before),
        )
        _run_child(kwargs)
    names = finished_shards(output_dir)
    if not names or (expected is not None and len(names) < expected):
        raise DownloadError(
            f"img2dataset finished {len(names)} of {expected or '?'} shards in "
            f"{output_dir!r}; run again with the same output folder to resume"
        )
    logger.info("url pool %s: %d shards ready (%d new)", input_path, len(names), len(set(names) - before))
    return shard_pattern(output_dir, names)
