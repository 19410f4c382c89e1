"""Rows in flight: a stage's rows arrive in parts, in any order; a shard is assembled once whole.

Ray Data may split and merge batches freely, so rows of one input shard can reach the end of a
stage in several batches and in any order. ``write_parts`` stores each batch's rows per shard as
part files in the stage's ``_parts/<shard>-<attempt>/`` folder; once all of a shard's rows have
arrived (the driver counts them from the parts' summaries, never from rows), a Ray task calls
``assemble_shard``, which sorts them back into the shard's order. Parts outlive a kill: a resumed
attempt lists them (``existing_parts``) and computes only the rows they do not hold.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.crashpoints import CrashPlan, crash_point

PART_SUMMARY_SCHEMA = pa.schema(
    [("shard_index", pa.int32()), ("rows", pa.int64()), ("shard_rows", pa.int64()), ("part", pa.string())]
)


def part_folder(parts_root: str, shard_index: int, attempt: str) -> Path:
    return Path(parts_root) / f"{shard_index:08d}-{attempt}"


def write_parts(batch: pa.Table, parts_root: str, attempts: dict[int, str], crash: CrashPlan) -> pa.Table:
    """Store a batch's rows as one part file per shard it touches, in the folder of the shard's
    attempt; return what was stored."""
    summaries = []
    shard_ids = batch["shard_index"].to_numpy()
    for shard_index in np.unique(shard_ids):
        rows = batch.filter(pc.equal(batch["shard_index"], pa.scalar(int(shard_index), pa.int32())))
        folder = part_folder(parts_root, int(shard_index), attempts[int(shard_index)])
        folder.mkdir(parents=True, exist_ok=True)
        # Arrow IPC, uncompressed: parts are read back once, right away, and may hold JPEG bytes
        # that do not compress; IPC maps them back without a decode step.
        part = folder / f"{uuid.uuid4().hex}.arrow"
        tmp = part.with_name(f".{part.name}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
        os.replace(tmp, part)
        crash_point("part_written", crash)
        summaries.append(
            {
                "shard_index": int(shard_index),
                "rows": rows.num_rows,
                "shard_rows": int(rows["shard_rows"][0].as_py()),
                "part": str(part),
            }
        )
    return pa.Table.from_pylist(summaries, schema=PART_SUMMARY_SCHEMA)


def _read_part(path: str) -> pa.Table:
    with pa.memory_map(path, "r") as source:
        return pa.ipc.open_file(source).read_all()


def existing_parts(folder: Path) -> tuple[list[str], list[int], int | None]:
    """The finished parts of an interrupted attempt: their paths, the rows they hold and the shard's
    row count (None when there are none). Only renamed parts count: a part is written whole or not."""
    paths, rows, shard_rows = [], [], None
    for path in sorted(folder.glob("*.arrow")) if folder.exists() else []:
        part = _read_part(str(path)).select(["row_in_shard", "shard_rows"])
        paths.append(str(path))
        rows.extend(part["row_in_shard"].to_pylist())
        if part.num_rows:
            shard_rows = int(part["shard_rows"][0].as_py())
    return paths, rows, shard_rows


def assemble_shard(
    part_paths: list[str], expected_rows: int, base: pa.Table | None = None, computed: pa.Table | None = None
) -> pa.Table:
    """A shard's rows in order, from its parts and (when only some rows were computed) ``base``,
    the rows kept from the stage's previous output, and ``computed``, rows computed in this task."""
    tables = [_read_part(p) for p in part_paths]
    if base is not None:
        tables.insert(0, base)
    if computed is not None:
        tables.append(computed)
    # permissive: a column that is all null in one part is null-typed there, typed in another
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.take(pc.sort_indices(table["row_in_shard"]))
    positions = table["row_in_shard"].to_numpy()
    if table.num_rows != expected_rows or not np.array_equal(positions, np.arange(expected_rows)):
        raise RuntimeError(
            f"shard parts hold {table.num_rows} rows at positions {positions[:5]}..., expected "
            f"{expected_rows} rows 0..{expected_rows - 1}: parts are inconsistent"
        )
    return table


def remove_parts(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
