"""DataComp subset files: the sorted ``.npy`` of uids that DataComp's resharder and published
subsets use, and their import / export against a run's catalog.

Format: a 1-D array of dtype ``[("f0", "<u8"), ("f1", "<u8")]`` (numpy's ``"u8,u8"``), one entry
per selected uid: ``f0`` the high and ``f1`` the low 64 bits of the 128-bit uid (32 hex chars),
sorted (``np.sort`` orders by f0 then f1). Duplicates are meaningful: the resharder writes a uid
once per occurrence, so they are kept everywhere here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.catalog import connect

logger = logging.getLogger(__name__)

SUBSET_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])
_BIG_ENDIAN = np.dtype([("f0", ">u8"), ("f1", ">u8")])
_HEX = re.compile(r"[0-9a-f]*")
_CHUNK = 1 << 20
_EXPORT_BATCH_ROWS = 1 << 17
# Above this many entries sharing their high 64 bits, lookups switch to a structured search.
_MAX_RUN = 32


class SubsetError(ValueError):
    """A subset file or uid list that does not follow DataComp's format."""


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    it = iter(values)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


def _bad_uid(uids: list[str]) -> SubsetError:
    bad = next(u for u in uids if not (isinstance(u, str) and len(u) == 32 and _HEX.fullmatch(u.lower())))
    return SubsetError(f"uid {bad!r} is not 32 hex characters (a 128-bit DataComp uid)")


def _pairs_of_chunk(uids: list[str]) -> np.ndarray:
    if not all(isinstance(u, str) for u in uids) or set(map(len, uids)) != {32}:
        raise _bad_uid(uids)
    try:
        raw = bytes.fromhex("".join(uids))
    except ValueError:
        raise _bad_uid(uids) from None
    if len(raw) != 16 * len(uids):  # fromhex skips whitespace: a uid had some
        raise _bad_uid(uids)
    return _entries(raw)


def _entries(raw: bytes) -> np.ndarray:
    words = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    out = np.empty(len(words), dtype=SUBSET_DTYPE)
    out["f0"], out["f1"] = words[:, 0], words[:, 1]
    return out


def _pairs_of_arrow(uids: pa.Array) -> np.ndarray | None:
    """The entries of a text array of well-formed uids straight from its data buffer (every value
    32 characters: the buffer is their concatenation), None for anything else (the list path then
    names the bad uid)."""
    if uids.null_count or not pa.types.is_string(uids.type):
        return None
    if len(uids) and pc.min_max(pc.binary_length(uids)).as_py() != {"min": 32, "max": 32}:
        return None
    if not len(uids):
        return _entries(b"")
    _, offsets, data = uids.buffers()
    start, end = np.frombuffer(offsets, dtype=np.int32)[[uids.offset, uids.offset + len(uids)]]
    try:
        raw = bytes.fromhex(memoryview(data)[start:end].tobytes().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return _entries(raw) if len(raw) == 16 * len(uids) else None


def uids_to_pairs(uids: Iterable[str]) -> np.ndarray:
    """uids (32 hex chars, any case) as ``u8,u8`` entries, in the given order."""
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    if isinstance(uids, pa.Array):
        fast = _pairs_of_arrow(uids)
        if fast is not None:
            return fast
        uids = uids.to_pylist()
    parts = [_pairs_of_chunk(chunk) for chunk in _chunks(uids)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=SUBSET_DTYPE)


def sort_entries(arr: np.ndarray) -> np.ndarray:
    """Entries in ``np.sort`` order (f0, then f1), a quarter of its time: numpy sorts a structured
    array by comparing records one call at a time, and an integer column by a vectorised sort. Two
    uids of one high word (besides duplicates) are about as likely as a 64-bit collision, so the
    high words order all but such pairs; if there are any, both words are sorted together."""
    out = arr[np.argsort(arr["f0"])]
    f0, f1 = out["f0"], out["f1"]
    if ((f0[1:] == f0[:-1]) & (f1[1:] < f1[:-1])).any():
        out = arr[np.lexsort((arr["f1"], arr["f0"]))]
    return out


def uids_to_subset(uids: Iterable[str]) -> np.ndarray:
    """A DataComp subset array of the uids: sorted, duplicates kept."""
    return sort_entries(uids_to_pairs(uids))


def subset_to_uids(arr: np.ndarray) -> list[str]:
    """The uids (32 lowercase hex chars) of subset entries, in array order."""
    arr = _checked(np.asarray(arr), "array")
    text = arr.astype(_BIG_ENDIAN).tobytes().hex()
    return [text[i : i + 32] for i in range(0, len(text), 32)]


def _checked(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype != SUBSET_DTYPE or arr.ndim != 1:
        raise SubsetError(
            f"{where}: found dtype {arr.dtype} with shape {arr.shape}; expected a 1-D array of dtype "
            f"{SUBSET_DTYPE} (numpy 'u8,u8': high and low 64 bits of each uid), as DataComp writes"
        )
    return arr


def is_sorted(arr: np.ndarray) -> bool:
    """Whether entries are in ``np.sort`` order (f0, then f1); checked in chunks to bound memory."""
    for start in range(0, max(len(arr) - 1, 0), _CHUNK):
        a = arr[start : start + _CHUNK + 1]
        f0, f1 = a["f0"], a["f1"]
        ordered = (f0[1:] > f0[:-1]) | ((f0[1:] == f0[:-1]) & (f1[1:] >= f1[:-1]))
        if not ordered.all():
            return False
    return True


def write_subset(path: str | os.PathLike, uids: Iterable[str] | np.ndarray) -> int:
    """Write uids (or subset entries) as a sorted DataComp subset file; returns the entry count.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    entries = isinstance(uids, np.ndarray) and uids.dtype.names is not None
    arr = sort_entries(_checked(uids, "uids")) if entries else uids_to_subset(uids)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)
    return len(arr)


def read_subset(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read and validate a subset file; ``mmap`` maps it instead (a billion-uid file is 16 GB)."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"subset file {str(path)!r} does not exist")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SubsetError(f"subset file {str(path)!r} is not a readable .npy array: {exc}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise SubsetError(f"subset file {str(path)!r} is an .npz archive; expected a single .npy array")
    return _checked(arr, f"subset file {str(path)!r}")


class SubsetIndex:
    """Counts how often uids occur in a sorted subset array.

    Searching the high words as plain uint64, then comparing low words over the (short) runs of
    equal high words, is ~3x faster than searching the structured array, but needs contiguous
    copies of both words. Up to ``copy_limit`` entries we make them; beyond, the (memory-mapped)
    array is searched as is, so that actors on one node share its pages instead of copying GBs.
    """

    def __init__(self, subset: np.ndarray, copy_limit: int = 1 << 24):
        self.subset = subset
        self.split = len(subset) <= copy_limit
        if self.split:
            self.high = np.ascontiguousarray(subset["f0"])
            self.low = np.ascontiguousarray(subset["f1"])

    def __len__(self) -> int:
        return len(self.subset)

    def counts(self, query: np.ndarray) -> np.ndarray:
        """Occurrences of each query entry (int64, aligned with ``query``)."""
        if not self.split:
            return np.searchsorted(self.subset, query, "right") - np.searchsorted(self.subset, query, "left")
        q0, q1 = query["f0"], query["f1"]
        left = np.searchsorted(self.high, q0, "left")
        right = np.searchsorted(self.high, q0, "right")
        longest = int((right - left).max()) if len(query) else 0
        if longest > _MAX_RUN:  # many uids sharing high words: not random uids, search whole entries
            return np.searchsorted(self.subset, query, "right") - np.searchsorted(self.subset, query, "left")
        counts = np.zeros(len(query), dtype=np.int64)
        for k in range(longest):
            idx = left + k
            inside = idx < right
            counts[inside] += self.low[idx[inside]] == q1[inside]
        return counts


def export_run_subset(
    run_dir: str | os.PathLike, path: str | os.PathLike, where: str = "keep", view: str = "samples"
) -> int:
    """Write the uids of the run's ``samples`` rows where the SQL condition ``where`` holds as a
    DataComp subset file; returns the number of entries. ``view="sidecars"`` asks the sidecars
    alone, without the columns a run left in its source: enough for ``keep`` (the run's own subset)."""
    con = connect(run_dir)
    try:
        query = con.sql(f"SELECT uid FROM {view} WHERE uid IS NOT NULL AND ({where})")
        # In batches, each made entries at once: the driver holds 16 bytes a uid, not its text.
        parts = [uids_to_pairs(batch.column(0)) for batch in query.to_arrow_reader(_EXPORT_BATCH_ROWS)]
    except duckdb.Error as exc:
        raise ValueError(f"where: {where!r} is not a valid condition on the samples view: {exc}") from None
    finally:
        con.close()
    count = write_subset(path, np.concatenate(parts) if parts else np.empty(0, dtype=SUBSET_DTYPE))
    logger.info("exported %d uids of %s where %s to %s", count, run_dir, where, path)
    return count


def subset_report(run_dir: str | os.PathLike, subset_path: str | os.PathLike) -> dict[str, Any]:
    """How a subset file relates to a run's pool (every row of its sidecars).

    ``entries``: entries in the file; ``distinct_uids``; ``duplicates``: entries beyond the first
    of each uid; ``matched_uids``: distinct subset uids present in the pool; ``matched_rows``:
    pool rows whose uid is in the subset; ``missing_uids``: distinct subset uids not in the pool;
    ``pool_rows``: rows of the pool.
    """
    uids = subset_to_uids(read_subset(subset_path))
    con = connect(run_dir)
    try:
        con.register("subset_uids", pa.table({"uid": pa.array(uids, pa.string())}))
        sql = """
            WITH s AS (SELECT uid, count(*) AS n FROM subset_uids GROUP BY uid),
                 pool AS (SELECT uid, count(*) AS rows FROM sidecars GROUP BY uid)
            SELECT
                (SELECT count(*) FROM subset_uids),
                (SELECT count(*) FROM s),
                (SELECT count(*) FROM s SEMI JOIN pool USING (uid)),
                (SELECT coalesce(sum(pool.rows), 0) FROM pool SEMI JOIN s USING (uid)),
                (SELECT coalesce(sum(rows), 0) FROM pool)
        """
        entries, distinct, matched_uids, matched_rows, pool_rows = con.execute(sql).fetchone()
    finally:
        con.close()
    return {
        "subset": str(subset_path),
        "entries": int(entries),
        "distinct_uids": int(distinct),
        "duplicates": int(entries - distinct),
        "matched_uids": int(matched_uids),
        "matched_rows": int(matched_rows),
        "missing_uids": int(distinct - matched_uids),
        "pool_rows": int(pool_rows),
    }
