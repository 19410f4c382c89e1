"""Input discovery and dispatch: the unit of work is one input shard.

``list_shards`` expands the recipe's input path (brace expansion, globs, fsspec URLs) into an
ordered list of ``ShardRef``; the index of a shard in that list is its ``shard_index`` and the
index of the output shard it produces, which is what makes runs resumable and deterministic.
Each format is a reader registered by name (``curate.registry.register_reader``) with
``read(ref) -> table`` and ``fetch_images(ref, rows) -> bytes per row``: the second re-reads a
sample's image bytes from the source (by byte range where the format allows it), so that stages
after the first, and the sink, carry no pixels between stages. A reader may also have
``array_columns(ref)`` and ``read_arrays(ref, names)``: columns it reads again alone for less than
storing them costs (DataComp's memory-mapped embeddings), which stage caches leave in the source.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import braceexpand
import fsspec
import pyarrow as pa

from curate.registry import get_reader, reader_names

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """The recipe's input cannot be read: names the path and what was expected."""


@dataclass(frozen=True)
class ShardRef:
    index: int
    path: str  # the shard's main file: a .tar, or a .parquet
    format: str  # img2dataset | webdataset | parquet | datacomp


def _expand(pattern: str) -> list[str]:
    paths: list[str] = []
    for part in braceexpand.braceexpand(pattern):
        if "://" in part:
            fs, _, _ = fsspec.get_fs_token_paths(part)
            protocol = part.split("://", 1)[0]
            if glob.has_magic(part):
                paths.extend(f"{protocol}://{p}" for p in sorted(fs.glob(part)))
            else:
                paths.append(part)
        elif glob.has_magic(part):
            paths.extend(sorted(glob.glob(part)))
        elif os.path.isdir(part):
            paths.extend(sorted(os.path.join(part, n) for n in os.listdir(part)))
        else:
            paths.append(part)
    return paths


def _exists(path: str) -> bool:
    fs, _, (p,) = fsspec.get_fs_token_paths(path)
    return fs.exists(p)


def _is_curate_sidecar(path: str) -> bool:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        return "output_key" in pq.read_schema(f).names


def _sibling(path: str, suffix: str) -> str:
    return path.rsplit(".", 1)[0] + suffix


def detect_format(path: str) -> str:
    if path.endswith(".tar"):
        sidecar = _sibling(path, ".parquet")
        if not _exists(sidecar):
            return "webdataset"
        # A curate run's own output also has a sidecar, but it lists dropped samples that its tar
        # does not hold by design: read such tars as plain WebDataset (their json has everything).
        return "webdataset" if _is_curate_sidecar(sidecar) else "img2dataset"
    if path.endswith(".parquet"):
        if _exists(_sibling(path, ".npz")):
            return "datacomp"
        return "parquet"
    raise InputError(f"input.path: value {path!r} is neither a .tar nor a .parquet shard")


def _suffixes(fmt: str) -> tuple[str, ...]:
    try:
        return get_reader(fmt).suffixes
    except KeyError:
        raise InputError(
            f"input.format: value {fmt!r} cannot be listed as shards; allowed: auto, {', '.join(reader_names())}"
        ) from None


def list_shards(pattern: str, fmt: str = "auto") -> list[ShardRef]:
    paths = _expand(pattern)
    if fmt == "auto":
        # A directory of img2dataset output holds .tar and .parquet side by side: the tars lead.
        if any(p.endswith(".tar") for p in paths):
            paths = [p for p in paths if p.endswith(".tar")]
        else:
            paths = [p for p in paths if p.endswith(".parquet")]
    else:
        paths = [p for p in paths if p.endswith(_suffixes(fmt))]
    if not paths:
        raise InputError(f"input.path: value {pattern!r} matches no .tar or .parquet shard")
    missing = [p for p in paths if not _exists(p)]
    if missing:
        raise InputError(f"input.path: {len(missing)} shard(s) do not exist, first: {missing[0]!r}")
    return [ShardRef(i, p, detect_format(p) if fmt == "auto" else fmt) for i, p in enumerate(paths)]


def _reader(ref: ShardRef):
    return get_reader(ref.format).cls()


def read_shard(ref: ShardRef, arrays: list[str] | None = None) -> pa.Table:
    """Read one shard into a sample table; unreadable samples become failed rows, never errors.
    ``arrays``: only these of its ``source_array_columns`` (None: all of them)."""
    reader = _reader(ref)
    if arrays is not None and hasattr(reader, "array_columns"):
        return reader.read(ref, arrays)
    return reader.read(ref)


def fetch_images(ref: ShardRef, rows: pa.Table) -> list[bytes | None]:
    """The image bytes of ``rows`` (a sample table's rows of this shard, without ``image``), read
    again from the source shard; None for a row without an image."""
    return _reader(ref).fetch_images(ref, rows)


def source_array_columns(ref: ShardRef) -> list[str]:
    """Columns of ``read_shard(ref)`` that its reader can read again by themselves, cheaply
    (``array_columns``: DataComp's embeddings); none for a reader without them."""
    reader = _reader(ref)
    return list(reader.array_columns(ref)) if hasattr(reader, "array_columns") else []


def read_source_columns(ref: ShardRef, names: list[str]) -> pa.Table:
    """Columns of ``read_shard(ref)``, exactly as it makes them, in ``names`` order: arrays of
    ``source_array_columns`` alone by the reader's ``read_arrays``; any others by the reader's
    ``read_columns`` if it projects, else by reading the shard (with only the arrays asked for)."""
    arrays = set(source_array_columns(ref))
    if all(name in arrays for name in names):
        return _reader(ref).read_arrays(ref, names)
    if projects_columns(ref):  # the columns alone where the reader can (DataComp's uid and scores)
        return read_columns(ref, names).select(names)
    return read_shard(ref, [name for name in names if name in arrays]).select(names)


def source_sql_columns(ref: ShardRef) -> dict[str, str]:
    """Columns of ``read_shard(ref)`` that DuckDB reads back from the source file alone, exactly as
    the reader makes them: name -> a SQL expression over the columns of ``read_parquet(ref.path)``
    (the reader's ``sql_columns``). Empty for a reader or shard that cannot say (a tar, a shard
    whose rows need conversions one by one)."""
    reader = _reader(ref)
    return dict(reader.sql_columns(ref)) if hasattr(reader, "sql_columns") else {}


def projects_columns(ref: ShardRef) -> bool:
    """Whether the shard's reader reads some columns without the rest (``read_columns``) and names
    every column of a whole read from the shard's headers (``column_names``)."""
    return hasattr(_reader(ref), "read_columns")


def read_columns(ref: ShardRef, names: list[str]) -> pa.Table:
    """Columns ``names`` of ``read_shard(ref)``, with the same values and types, in the order of
    ``source_columns(ref)``; by a reader that ``projects_columns``."""
    return _reader(ref).read_columns(ref, names)


def source_columns(ref: ShardRef) -> list[str]:
    """Every column of ``read_shard(ref)`` in its order, from headers alone (``projects_columns``)."""
    return list(_reader(ref).column_names(ref))


def preflight(shards: list[ShardRef], column_params: dict[str, str] | None = None) -> None:
    """Checks that need no data but would otherwise fail mid-run (each reader's own ``preflight``,
    e.g. DataComp parquet/npz alignment and that the columns steps read exist in the metadata)."""
    by_format: dict[str, list[ShardRef]] = {}
    for ref in shards:
        by_format.setdefault(ref.format, []).append(ref)
    for fmt, refs in by_format.items():
        reader = get_reader(fmt).cls()
        if hasattr(reader, "preflight"):
            reader.preflight(refs, column_params or {})
