"""Input discovery and dispatch: the unit of work is one input shard.

``list_shards`` expands the recipe's input path (brace expansion, globs, fsspec URLs) into an
ordered list of ``ShardRef``; the index of a shard in that list is its ``shard_index`` and the
index of the output shard it produces, which is what makes runs resumable and deterministic.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import braceexpand
import fsspec
import pyarrow as pa

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = {
    "webdataset": (".tar",),
    "img2dataset": (".tar",),
    "parquet": (".parquet",),
    "datacomp": (".parquet",),
}


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


def list_shards(pattern: str, fmt: str = "auto") -> list[ShardRef]:
    paths = _expand(pattern)
    if fmt == "auto":
        # A directory of img2dataset output holds .tar and .parquet side by side: the tars lead.
        if any(p.endswith(".tar") for p in paths):
            paths = [p for p in paths if p.endswith(".tar")]
        else:
            paths = [p for p in paths if p.endswith(".parquet")]
    else:
        suffixes = SHARD_SUFFIXES.get(fmt)
        if suffixes is None:
            raise InputError(f"input.format: value {fmt!r} cannot be listed as shards")
        paths = [p for p in paths if p.endswith(suffixes)]
    if not paths:
        raise InputError(f"input.path: value {pattern!r} matches no .tar or .parquet shard")
    missing = [p for p in paths if not _exists(p)]
    if missing:
        raise InputError(f"input.path: {len(missing)} shard(s) do not exist, first: {missing[0]!r}")
    return [ShardRef(i, p, detect_format(p) if fmt == "auto" else fmt) for i, p in enumerate(paths)]


def read_shard(ref: ShardRef) -> pa.Table:
    """Read one shard into a sample table; unreadable samples become failed rows, never errors."""
    if ref.format in ("img2dataset", "webdataset"):
        from curate.readers.tar_reader import read_tar_shard

        return read_tar_shard(ref)
    if ref.format == "parquet":
        from curate.readers.parquet_reader import read_parquet_shard

        return read_parquet_shard(ref)
    if ref.format == "datacomp":
        from curate.readers.datacomp_reader import read_datacomp_shard

        return read_datacomp_shard(ref)
    raise InputError(f"input.format: value {ref.format!r}; allowed: img2dataset, webdataset, parquet, datacomp")


def preflight(shards: list[ShardRef], column_params: dict[str, str] | None = None) -> None:
    """Checks that need no data but would otherwise fail mid-run: DataComp parquet/npz alignment,
    and that the columns steps read (``column_params``: recipe field -> column) exist in the
    metadata-only pool, which has no step that could produce them."""
    datacomp = [s for s in shards if s.format == "datacomp"]
    if not datacomp:
        return
    from curate.readers.datacomp_reader import check_datacomp_shard, index_npz

    for ref in datacomp:
        check_datacomp_shard(ref)
    if column_params:
        import pyarrow.parquet as pq

        first = datacomp[0].path
        with fsspec.open(first, "rb") as f:
            available = set(pq.read_schema(f).names)
        available |= {m.name for m in index_npz(first.rsplit(".", 1)[0] + ".npz") or []}
        for field, column in column_params.items():
            if column not in available:
                raise InputError(
                    f"{field}: value {column!r} is not a column of {first!r} or its npz; available: {sorted(available)}"
                )
