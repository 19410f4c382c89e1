"""Writing output: rows arrive in parts, in any order; a shard is written once it is whole.

Ray Data may split and merge batches freely, so rows of one input shard can reach the writer
in several batches and in any order. ``write_parts`` stores each batch's rows per shard as
part files under ``_tmp``; once all of a shard's rows have arrived, ``finalize_shard`` sorts
them, writes ``NNNNNNNN.tar`` (kept samples), ``NNNNNNNN.parquet`` (every row, no image bytes)
and ``NNNNNNNN_stats.json`` under temporary names, renames them into place, and then writes
the shard's done-marker. A kill at any moment leaves either a done shard or one to redo.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.crashpoints import crash_point
from curate.rundir import RunDir, atomic_write_text
from curate.splits import split_finals, split_members
from curate.stats import shard_counters
from schemas.recipe import OutputSpec
from schemas.tables import HEAVY_COLUMNS, RUNNER_COLUMNS

PART_SUMMARY_SCHEMA = pa.schema(
    [("shard_index", pa.int32()), ("rows", pa.int64()), ("shard_rows", pa.int64()), ("part", pa.string())]
)
# Fixed tar header fields, so that the same rows always give the same bytes.
_TAR_MTIME = 0


def shard_name(shard_index: int) -> str:
    return f"{shard_index:08d}"


def output_key(shard_index: int, row_in_shard: int) -> str:
    """Globally unique within a run, no dots, sorted like the samples: shard then position."""
    return f"{shard_index:08d}{row_in_shard:06d}"


def write_parts(batch: pa.Table, tmp_dir: str) -> pa.Table:
    """Store a batch's rows as one part file per shard it touches; return what was stored."""
    summaries = []
    shard_ids = batch["shard_index"].to_numpy()
    for shard_index in np.unique(shard_ids):
        rows = batch.filter(pc.equal(batch["shard_index"], pa.scalar(int(shard_index), pa.int32())))
        folder = Path(tmp_dir) / shard_name(int(shard_index))
        folder.mkdir(parents=True, exist_ok=True)
        # Arrow IPC, uncompressed: parts are read back once, right away, and are mostly JPEG bytes
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


def _json_ready(row: dict) -> dict:
    out = {}
    for name, value in row.items():
        if name == "meta":
            out["meta"] = json.loads(value) if value else {}
        elif isinstance(value, bytes):
            continue
        elif isinstance(value, float) and value != value:
            out[name] = None
        else:
            out[name] = value
    return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, rows: pa.Table, caption_field: str) -> int:
    """Write the kept rows as samples; a ``repeat`` column (DataComp subsets with duplicates)
    writes a sample that many times, the copies keyed ``{key}_{j}``. Returns samples written."""
    written = 0
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        # Embeddings stay in the Parquet sidecar (row-aligned, exportable as DataComp .npz); in every
        # sample's json they would multiply its size for no reader's benefit.
        vectors = {f.name for f in rows.schema if pa.types.is_fixed_size_list(f.type)}
        skip = set(HEAVY_COLUMNS + RUNNER_COLUMNS) | vectors
        for row in rows.to_pylist():
            caption = row.get(caption_field)
            text = ("" if caption is None else str(caption)).encode("utf-8")
            sample_json = json.dumps(
                _json_ready({k: v for k, v in row.items() if k not in skip}), ensure_ascii=False, default=str
            ).encode()
            for copy in range(max(1, row.get("repeat") or 1)):
                key = row["output_key"] if copy == 0 else f"{row['output_key']}_{copy}"
                _add_member(tar, f"{key}.{row['image_ext'] or 'jpg'}", row["image"])
                _add_member(tar, f"{key}.txt", text)
                _add_member(tar, f"{key}.json", sample_json)
                written += 1
        f.flush()
        os.fsync(f.fileno())
    return written


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


def finalize_shard(
    run: RunDir, shard_index: int, part_paths: list[str], expected_rows: int, output: OutputSpec, step_ids: list[str]
) -> dict:
    counters = finalize_table(run, shard_index, assemble_shard(part_paths, expected_rows), output, step_ids)
    for p in part_paths:
        Path(p).unlink(missing_ok=True)
    return counters


def finalize_table(run: RunDir, shard_index: int, table: pa.Table, output: OutputSpec, step_ids: list[str]) -> dict:
    """Write one whole shard: its files under temporary names, renamed, then its done-marker."""
    name = shard_name(shard_index)
    keep = table["keep"].to_pylist()
    keys = [
        output_key(shard_index, int(r)) if k else None
        for r, k in zip(table["row_in_shard"].to_pylist(), keep, strict=True)
    ]
    table = table.append_column("output_key", pa.array(keys, pa.string()))
    table = table.append_column("shard", pa.array([f"{name}.tar"] * table.num_rows, pa.string()))
    kept = table.filter(pc.field("keep"))

    final = {".parquet": run.shards / f"{name}.parquet", "_stats.json": run.shards / f"{name}_stats.json"}
    if output.layout == "buckets":
        final["chunks"] = run.chunks / f"{name}.parquet"
    elif output.layout == "samples":
        final[".tar"] = run.shards / f"{name}.tar"
    tmp = {ext: p.with_name(f".{p.name}.tmp") for ext, p in final.items()}
    written = kept.num_rows
    if output.layout == "buckets":
        from curate.pack.buckets import write_chunk_file

        write_chunk_file(tmp["chunks"], kept)
    elif output.layout == "samples":
        written = write_tar(tmp[".tar"], kept, output.caption_field)
    # The sidecar is metadata: image bytes live in the tar, token ids in the bucket shards.
    heavy = [c for c in (*HEAVY_COLUMNS, *RUNNER_COLUMNS, "tokens") if c in table.column_names]
    pq.write_table(table.drop_columns(heavy), tmp[".parquet"])
    split_counts = {}
    if output.split is not None:
        members = split_members(kept, output.split.column)
        split_paths = split_finals(run, output, name, list(members))
        for (value, ext), path in split_paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            final[(value, ext)] = path
            tmp[(value, ext)] = path.with_name(f".{path.name}.tmp")
            rows = kept.take(members[value])
            if ext == ".tar":
                write_tar(tmp[(value, ext)], rows, output.caption_field)
            else:
                pq.write_table(rows.drop_columns(heavy), tmp[(value, ext)])
        split_counts = {value: len(rows) for value, rows in members.items()}
    counters = {
        "shard": f"{name}.tar",
        "shard_index": shard_index,
        "source": table["source"][0].as_py(),
        **shard_counters(table, step_ids),
        "samples_written": written,
        **({"splits": split_counts} if output.split is not None else {}),
    }
    tmp["_stats.json"].write_text(
        json.dumps({"successes": written, "count": table.num_rows, "kept": kept.num_rows}, indent=2)
    )
    crash_point("shard_files_written")
    for ext in final:
        os.replace(tmp[ext], final[ext])
    crash_point("shard_renamed")
    atomic_write_text(run.marker(shard_index), json.dumps(counters, indent=2))
    return counters
