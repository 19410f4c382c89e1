"""Rows in flight: a stage's rows arrive in parts, in any order; a shard is assembled once whole.

Ray Data may split and merge batches freely, so rows of one input shard can reach the end of a
stage in several batches and in any order. ``write_parts`` stores each batch's rows per shard as
part files under ``_tmp``; once all of a shard's rows have arrived (the driver counts them from
the parts' summaries, never from rows), a Ray task calls ``assemble_shard``, which sorts them back
into the shard's order.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PART_SUMMARY_SCHEMA = pa.schema(
    [("shard_index", pa.int32()), ("rows", pa.int64()), ("shard_rows", pa.int64()), ("part", pa.string())]
)


def write_parts(batch: pa.Table, tmp_dir: str) -> pa.Table:
    """Store a batch's rows as one part file per shard it touches; return what was stored."""
    summaries = []
    shard_ids = batch["shard_index"].to_numpy()
    for shard_index in np.unique(shard_ids):
        rows = batch.filter(pc.equal(batch["shard_index"], pa.scalar(int(shard_index), pa.int32())))
        folder = Path(tmp_dir) / f"{int(shard_index):08d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Arrow IPC, uncompressed: parts are read back once, right away, and may hold JPEG bytes
        # that do not compress; IPC maps them back without a decode step.
        part = folder / f"{uuid.uuid4().hex}.arrow"
        tmp = part.with_name(f".{part.name}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
        os.replace(tmp, part)
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


def assemble_shard(part_paths: list[str], expected_rows: int) -> pa.Table:
    table = pa.concat_tables([_read_part(p) for p in part_paths], promote_options="default")
    table = table.take(pc.sort_indices(table["row_in_shard"]))
    positions = table["row_in_shard"].to_numpy()
    if table.num_rows != expected_rows or not np.array_equal(positions, np.arange(expected_rows)):
        raise RuntimeError(
            f"shard parts hold {table.num_rows} rows at positions {positions[:5]}..., expected "
            f"{expected_rows} rows 0..{expected_rows - 1}: parts are inconsistent"
        )
    return table


def remove_parts(part_paths: list[str]) -> None:
    for p in part_paths:
        Path(p).unlink(missing_ok=True)
