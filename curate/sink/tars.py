"""Writing WebDataset tars: fixed header fields, so the same rows always give the same bytes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa

from schemas.tables import HEAVY_COLUMNS, JSON_TEXT_SUFFIXES, LOCATION_COLUMNS, RUNNER_COLUMNS

_TAR_MTIME = 0


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _json_ready(row: dict) -> dict:
    out = {}
    for name, value in row.items():
        if name == "meta":
            out["meta"] = json.loads(value) if value else {}
        elif name.endswith(JSON_TEXT_SUFFIXES) and isinstance(value, str):
            out[name] = json.loads(value)
        elif isinstance(value, bytes):
            continue
        elif isinstance(value, float) and value != value:
            out[name] = None
        else:
            out[name] = value
    return out


def write_tar(path: Path, rows: pa.Table, caption_field: str) -> int:
    """Write the kept rows as samples; a ``repeat`` column (DataComp subsets with duplicates)
    writes a sample that many times, the copies keyed ``{key}_{j}``. Returns samples written."""
    if rows.num_rows and caption_field not in rows.column_names:
        # Every txt would be empty: a recipe mistake (or a captioning step that did not run), not data.
        raise ValueError(
            f"output.caption_field: column {caption_field!r} is not in the kept rows; columns: "
            f"{', '.join(c for c in rows.column_names if c not in HEAVY_COLUMNS)}"
        )
    written = 0
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        # Embeddings stay in the Parquet sidecar (row-aligned, exportable as DataComp .npz); in every
        # sample's json they would multiply its size for no reader's benefit.
        vectors = {f.name for f in rows.schema if pa.types.is_fixed_size_list(f.type)}
        skip = set(HEAVY_COLUMNS + RUNNER_COLUMNS + LOCATION_COLUMNS) | vectors
        for row in rows.to_pylist():
            caption = row.get(caption_field)
            text = ("" if caption is None else str(caption)).encode("utf-8")
            sample_json = json.dumps(
                _json_ready({k: v for k, v in row.items() if k not in skip}), ensure_ascii=False, default=str
            ).encode()
            for copy in range(max(1, row.get("repeat") or 1)):
                key = row["output_key"] if copy == 0 else f"{row['output_key']}_{copy}"
                add_member(tar, f"{key}.{row['image_ext'] or 'jpg'}", row["image"])
                add_member(tar, f"{key}.txt", text)
                add_member(tar, f"{key}.json", sample_json)
                written += 1
        f.flush()
        os.fsync(f.fileno())
    return written
