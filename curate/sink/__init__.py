"""The sink: per input shard, the final files of the run, written by a Ray task next to the data.

``write_final_shard`` takes a shard's table as of the last stage, fetches the kept rows' image
bytes from the source by byte range when the layout writes images and the last stage did not
carry them, and writes ``shards/NNNNNNNN.parquet`` (every row, no bytes) and
``NNNNNNNN_stats.json`` plus what the output layout writes (``output.layout``, a registered
layout: ``samples`` tars, ``buckets`` chunks, split sets), each staged (``StagedFiles``: under a
temporary name beside the final one, or in a local scratch folder for an object store). Then it
commits them (renamed, or uploaded) and writes the shard's done-marker last. A kill at any moment
leaves either a done shard or one to redo, and a redo writes the same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.crashpoints import CrashPlan, crash_point
from curate.readers.base import ShardRef, fetch_images, source_array_columns, source_sql_columns
from curate.registry import get_layout
from curate.run_storage import StagedFiles
from curate.rundir import RunDir
from curate.stage_store import write_sample_parquet
from curate.stats import shard_counters
from schemas.recipe import OutputSpec
from schemas.tables import HEAVY_COLUMNS, RUNNER_COLUMNS, STATUS_SUCCESS


@dataclass(frozen=True)
class SinkContext:
    """What a sink task needs (it is pickled to the worker)."""

    root: str
    output: OutputSpec
    step_rows: tuple[tuple[str, str], ...]  # (step id, rows) in recipe order, for the counters
    crash: CrashPlan
    changed: tuple[str, ...] = ()  # existing columns steps may change (``Plan.changed_columns``)

    @property
    def run(self) -> RunDir:
        return RunDir(self.root)


def shard_name(shard_index: int) -> str:
    return f"{shard_index:08d}"


def output_keys(shard_index: int, table: pa.Table) -> pa.ChunkedArray:
    """The ``output_key`` of each kept row of the shard's ``table`` (null for the others): its shard
    in 8 digits, then its row in 6 (``00000003000001``); globally unique within a run, no dots,
    sorted like the samples: shard then position."""
    rows = pc.utf8_lpad(pc.cast(table["row_in_shard"], pa.string()), 6, "0")
    keys = pc.binary_join_element_wise(pa.scalar(shard_name(shard_index)), rows, "")
    return pc.if_else(pc.fill_null(table["keep"], False), keys, pa.scalar(None, pa.string()))


def left_in_source(ctx: SinkContext, ref: ShardRef) -> dict[str, str | None]:
    """The source's columns that the shard's final files leave in the source, each with the DuckDB
    SQL that reads it back from the source file (``output.source_columns: leave``, the reader's
    ``sql_columns`` but those a step may change), or None for an array (``output.source_arrays:
    leave``: it stays in the npz, row-aligned). Only a local file named by an absolute path
    without glob characters leaves them: DuckDB's ``filename`` must be ``source`` as written, from
    wherever the catalog is opened; a relative path or one on an object store keeps them in the sidecars."""
    output = ctx.output
    left: dict[str, str | None] = {}
    if output.source_arrays == "leave":
        left.update(dict.fromkeys(source_array_columns(ref)))
    if output.source_columns == "leave" and _joinable(ref.path):
        left.update({c: sql for c, sql in source_sql_columns(ref).items() if c not in ctx.changed})
    return left


def _joinable(source: str) -> bool:
    return "://" not in source and os.path.isabs(source) and not any(c in source for c in "*?[{")


def sidecar(table: pa.Table) -> pa.Table:
    """The Parquet sidecar is metadata: image bytes live in the tar, token ids in the bucket shards."""
    heavy = [c for c in (*HEAVY_COLUMNS, *RUNNER_COLUMNS, "tokens") if c in table.column_names]
    return table.drop_columns(heavy)


def with_images(ref: ShardRef, table: pa.Table) -> pa.Table:
    """``table`` with the image bytes of every kept, readable row (fetched from the source if the
    last stage did not carry them)."""
    need = pc.and_(pc.fill_null(table["keep"], False), pc.equal(table["status"], STATUS_SUCCESS))
    if "image" in table.column_names:
        need = pc.and_(need, pc.is_null(table["image"]))
    need_rows = pc.indices_nonzero(need.combine_chunks() if isinstance(need, pa.ChunkedArray) else need)
    if not len(need_rows) and "image" in table.column_names:
        return table  # the last stage carried every kept image
    images = table["image"].to_pylist() if "image" in table.column_names else [None] * table.num_rows
    if len(need_rows):
        fetched = fetch_images(ref, table.take(need_rows))
        for i, data in zip(need_rows.to_pylist(), fetched, strict=True):
            images[i] = data
    column = pa.array(images, pa.binary())
    if "image" in table.column_names:
        return table.set_column(table.schema.get_field_index("image"), "image", column)
    return table.append_column("image", column)


def write_final_shard(ctx: SinkContext, ref: ShardRef, table: pa.Table, stage_version: str) -> dict:
    """Write one whole shard: its files staged and committed, then its done-marker, which names the
    version of the last stage's output it was written from (``stage_version``)."""
    run, output = ctx.run, ctx.output
    layout = get_layout(output.layout)
    name = shard_name(ref.index)
    left = left_in_source(ctx, ref)  # no file of the output holds them: they stay in the source
    table = table.drop_columns([c for c in left if c in table.column_names])
    if layout.writes_images:
        table = with_images(ref, table)
    table = table.append_column("output_key", output_keys(ref.index, table))
    table = table.append_column("shard", pa.repeat(pa.scalar(f"{name}.tar", pa.string()), table.num_rows))
    kept = table.filter(pc.fill_null(table["keep"], False))

    with StagedFiles(run.storage) as files:
        extra = layout.cls().write_shard(ctx, name, kept, files)
        write_sample_parquet(sidecar(table), files.path(f"shards/{name}.parquet"))
        written = extra.get("samples_written", kept.num_rows)
        stats = {"successes": written, "count": table.num_rows, "kept": kept.num_rows}
        Path(files.path(f"shards/{name}_stats.json")).write_text(json.dumps(stats, indent=2))
        counters = {
            "shard": f"{name}.tar",
            "shard_index": ref.index,
            "source": ref.path,
            **shard_counters(table, list(ctx.step_rows)),
            "samples_written": written,
            **{k: v for k, v in extra.items() if k != "samples_written"},
            "stage_version": stage_version,
            # what the catalog's samples view joins back from the source (``curate.catalog``)
            "left_in_source": {c: sql for c, sql in left.items() if sql is not None},
        }
        crash_point("shard_files_written", ctx.crash)
        files.commit()
    crash_point("shard_renamed", ctx.crash)
    run.storage.write_json(run.marker_name(ref.index), counters)
    return counters
