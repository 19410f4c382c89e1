"""Rows in flight: a stage's rows arrive in parts, in any order; a shard is assembled once whole.

Ray Data may split and merge batches freely, so rows of one input shard can reach the end of a
stage in several batches and in any order. ``write_parts`` stores each batch's rows per shard as
part files in the stage's ``_parts/<shard>-<attempt>/`` folder; once all of a shard's rows have
arrived (the driver counts them from the parts' summaries, never from rows), a Ray task calls
``assemble_shard``, which sorts them back into the shard's order. Parts outlive a kill: a resumed
attempt lists them (``existing_parts``) and computes only the rows they do not hold.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.crashpoints import CrashPlan, crash_point
from curate.run_storage import RunStorage

PART_SUMMARY_SCHEMA = pa.schema(
    [("shard_index", pa.int32()), ("rows", pa.int64()), ("shard_rows", pa.int64()), ("part", pa.string())]
)


def part_folder(shard_index: int, attempt: str) -> str:
    """The folder (in a stage's ``_parts``) of one attempt at one shard."""
    return f"{shard_index:08d}-{attempt}"


def write_parts(batch: pa.Table, parts: RunStorage, attempts: dict[int, str], crash: CrashPlan) -> pa.Table:
    """Store a batch's rows as one part file per shard it touches, in the folder of the shard's
    attempt; return what was stored (each part by its name in ``parts``)."""
    summaries = []
    shard_ids = batch["shard_index"].to_numpy()
    for shard_index in np.unique(shard_ids):
        rows = batch.filter(pc.equal(batch["shard_index"], pa.scalar(int(shard_index), pa.int32())))
        name = f"{part_folder(int(shard_index), attempts[int(shard_index)])}/{uuid.uuid4().hex}.arrow"
        # Arrow IPC, uncompressed: parts are read back once, right away, and may hold JPEG bytes
        # that do not compress; IPC maps them back without a decode step. Committed whole.
        with parts.writer(name) as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
        crash_point("part_written", crash)
        summaries.append(
            {
                "shard_index": int(shard_index),
                "rows": rows.num_rows,
                "shard_rows": int(rows["shard_rows"][0].as_py()),
                "part": name,
            }
        )
    return pa.Table.from_pylist(summaries, schema=PART_SUMMARY_SCHEMA)


def existing_parts(parts: RunStorage, folder: str) -> tuple[list[str], list[int], int | None]:
    """The finished parts of an interrupted attempt: their names, the rows they hold and the shard's
    row count (None when there are none). Only committed parts count: a part is written whole or not."""
    names, rows, shard_rows = [], [], None
    for name in parts.list(folder, "*.arrow"):
        part = parts.read_arrow(f"{folder}/{name}").select(["row_in_shard", "shard_rows"])
        names.append(f"{folder}/{name}")
        rows.extend(part["row_in_shard"].to_pylist())
        if part.num_rows:
            shard_rows = int(part["shard_rows"][0].as_py())
    return names, rows, shard_rows


def assemble_shard(
    parts: RunStorage,
    names: list[str],
    expected_rows: int,
    base: pa.Table | None = None,
    computed: pa.Table | None = None,
) -> pa.Table:
    """A shard's rows in order, from its parts and (when only some rows were computed) ``base``,
    the rows kept from the stage's previous output, and ``computed``, rows computed in this task."""
    tables = [parts.read_arrow(n) for n in names]
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


def remove_parts(parts: RunStorage, folder: str) -> None:
    parts.remove(folder)
