"""Shard sets split by a column (``output.split``), e.g. one training set per MoDE data expert.

For every input shard, each value of the split column that its kept samples carry gets
``<folder>/<value>/NNNNNNNN.tar`` and ``.parquet`` (the same samples, keys and json as in the main
shards). A list column puts a sample in several sets. The files are written beside the main
shard's and renamed with them, before the done-marker, so resume covers them. When the run ends,
every set gets an (empty) shard for any input shard that had none of its samples, so that one
brace pattern ``{00000000..NNNNNNNN}.tar`` names each set, and a ``sizes.json`` like the main one.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.registry import get_layout
from curate.run_storage import StagedFiles
from curate.rundir import RunDir
from curate.sink.tars import write_tar
from schemas.recipe import OutputSpec

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def split_members(kept: pa.Table, column: str) -> dict[str, np.ndarray]:
    """Row indices of ``kept`` per value of ``column`` (int/string, or a list of them)."""
    if column not in kept.column_names:
        raise ValueError(f"output.split.column: value {column!r} is not a column; columns: {kept.column_names}")
    values = kept[column].to_pylist()
    members: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        for v in value if isinstance(value, list) else [value]:
            if v is None:
                continue
            name = str(v)
            if not _SAFE_VALUE.match(name):
                raise ValueError(f"output.split.column: value {name!r} of {column!r} cannot name a folder")
            members.setdefault(name, []).append(row)
    return {name: np.asarray(rows, dtype=np.int64) for name, rows in sorted(members.items())}


def split_finals(output: OutputSpec, name: str, values: list[str]) -> dict[tuple[str, str], str]:
    """Names (in the run folder) of one shard's split files, keyed (value, extension)."""
    assert output.split is not None
    exts = (".parquet", ".tar") if get_layout(output.layout).writes_images else (".parquet",)
    return {(v, ext): f"{output.split.folder}/{v}/{name}{ext}" for v in values for ext in exts}


def finish_splits(run: RunDir, output: OutputSpec, markers: list[dict]) -> dict[str, int]:
    """Fill the gaps (empty shards) and write each set's sizes.json; returns samples per set."""
    if output.split is None:
        return {}
    values = sorted({v for m in markers for v in m.get("splits", {})})
    totals = {}
    for value in values:
        folder = f"{output.split.folder}/{value}"
        sizes = {}
        with StagedFiles(run.storage) as files:
            for m in sorted(markers, key=lambda m: m["shard_index"]):
                stem = m["shard"].removesuffix(".tar")
                count = m.get("splits", {}).get(value, 0)
                if not count:
                    empty = run.storage.parquet_schema(f"shards/{stem}.parquet").empty_table()
                    pq.write_table(empty, files.path(f"{folder}/{stem}.parquet"))
                    if get_layout(output.layout).writes_images:
                        write_tar(files.path(f"{folder}/{stem}.tar"), empty, output.caption_field)
                sizes[m["shard"]] = count
            files.commit()
        run.storage.write_json(f"{folder}/sizes.json", sizes)
        totals[value] = sum(sizes.values())
    return totals
