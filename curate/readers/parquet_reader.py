"""Read a Parquet pool that holds the image bytes (one row per sample).

The image is the first of ``image``, ``jpg``, ``png``, ``webp``, ``img`` that exists, stored
either as a binary column or as a struct with a ``bytes`` field (Hugging Face ``datasets``
``Image`` feature; its ``path`` goes to ``meta`` as ``image_path``). The caption is ``caption``,
else ``text``. Columns that match a sample column (``uid``, ``key``, ``url``, ``width``,
``height``, ``original_width``, ``original_height``, ``sha256``, ``status``,
``error_message``, ``image_ext``) fill it; every other column goes to ``meta`` as JSON.

A pool of urls without bytes is not read here: it is downloaded first (``input.format: urls``,
see ``curate.readers.url_pool``). The helpers below are shared with the DataComp reader.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curate.identity import derive_uid, normalize_uid, sha256_hex
from curate.readers.base import InputError, ShardRef
from curate.registry import register_reader
from schemas.tables import STATUS_FAILED_READ, STATUS_SUCCESS, rows_to_sample_table

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "img")
CAPTION_COLUMNS = ("caption", "text")
# Pool columns copied into the sample column of the same name.
TAKEN_COLUMNS = (
    "key",
    "url",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "status",
    "error_message",
    "image_ext",
)
INT_COLUMNS = ("width", "height", "original_width", "original_height")


def is_binary_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )


def guess_image_ext(data: bytes) -> str:
    """The image format from its magic bytes; ``jpg`` when unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return "jpg"


def json_safe(value: Any) -> Any:
    """Make a value JSON-serialisable: drop bytes, NaN/inf become null, the rest via ``str``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items() if not isinstance(v, bytes | bytearray)}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value if not isinstance(v, bytes | bytearray)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def meta_json(meta: dict[str, Any]) -> str | None:
    safe = json_safe({k: v for k, v in meta.items() if not isinstance(v, bytes | bytearray)})
    return json.dumps(safe, sort_keys=True, ensure_ascii=False) if safe else None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) else None


def read_parquet_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (``columns`` of it; None: all) through fsspec (local paths, ``file://``,
    ``s3://`` ...)."""
    try:
        with fsspec.open(path, "rb") as f:
            return pq.ParquetFile(f).read(columns=columns)  # one file: no dataset layer (read_table's)
    except FileNotFoundError as exc:
        raise InputError(f"input.path: {path!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"input.path: {path!r} is not a readable Parquet file: {exc}") from exc


def finish_uid(row: dict[str, Any], raw_uid: Any, meta: dict[str, Any]) -> None:
    """Set ``row["uid"]``: the pool's uid normalised, else one derived from url/caption/sha256."""
    uid = normalize_uid(raw_uid)
    if uid is None and raw_uid is not None:
        meta["source_uid"] = raw_uid  # kept so that nothing the pool said is lost
    row["uid"] = uid or derive_uid(row.get("url"), row.get("caption"), row.get("sha256"))


def _image_column(table: pa.Table, path: str) -> tuple[str, bool]:
    """Name of the image column and whether it is a struct with a ``bytes`` field."""
    for name in IMAGE_COLUMNS:
        if name not in table.column_names:
            continue
        t = table.schema.field(name).type
        if is_binary_type(t):
            return name, False
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return name, True
        logger.warning("%s: column %r has type %s, not binary nor struct<bytes>; ignored", path, name, t)
    raise InputError(
        f"input.path: {path!r} has no image column (looked for {', '.join(IMAGE_COLUMNS)} as binary or "
        f"struct with a 'bytes' field); columns found: {table.column_names}. A pool of urls without "
        "image bytes must be downloaded first: set `input.format: urls`."
    )


def _image_bytes(value: Any, is_struct: bool, meta: dict[str, Any]) -> bytes | None:
    if not is_struct:
        return value
    if value is None:
        return None
    if value.get("path"):
        meta["image_path"] = value["path"]
    return value.get("bytes")


def read_parquet_shard(ref: ShardRef) -> pa.Table:
    table = read_parquet_table(ref.path)
    image_col, is_struct = _image_column(table, ref.path)
    caption_col = next((c for c in CAPTION_COLUMNS if c in table.column_names), None)
    consumed = {image_col, caption_col, "uid", *TAKEN_COLUMNS}
    meta_cols = [f.name for f in table.schema if f.name not in consumed and not is_binary_type(f.type)]
    columns = {
        name: table.column(name).to_pylist() for name in table.column_names if name in consumed or name in meta_cols
    }
    n = table.num_rows
    rows: list[dict[str, Any]] = []
    failed = 0
    for i in range(n):
        meta = {name: columns[name][i] for name in meta_cols if columns[name][i] is not None}
        row: dict[str, Any] = {name: columns[name][i] for name in TAKEN_COLUMNS if name in columns}
        row["caption"] = None if caption_col is None else columns[caption_col][i]
        if row["caption"] is not None and not isinstance(row["caption"], str):
            row["caption"] = str(row["caption"])
        if row.get("key") is not None:
            row["key"] = str(row["key"])
        for name in INT_COLUMNS:
            row[name] = as_int(row.get(name))
        image = _image_bytes(columns[image_col][i], is_struct, meta)
        status = row.get("status") or STATUS_SUCCESS
        if status == STATUS_SUCCESS and not image:
            status = STATUS_FAILED_READ
            what = "null" if image is None else "empty"
            row["error_message"] = f"image column {image_col!r} is {what} in row {i}"
        row["status"] = status
        if image:
            row["image"] = bytes(image)
            row["image_ext"] = row.get("image_ext") or guess_image_ext(row["image"])
            row["sha256"] = row.get("sha256") or sha256_hex(row["image"])
        else:
            row["image_ext"] = None
        failed += status != STATUS_SUCCESS
        finish_uid(row, columns["uid"][i] if "uid" in columns else None, meta)
        row.update(source=ref.path, shard_index=ref.index, row_in_shard=i, shard_rows=n, meta=meta_json(meta))
        rows.append(row)
    if failed:
        logger.info("%s: %d of %d rows not readable", ref.path, failed, n)
    return rows_to_sample_table(rows)


@register_reader("parquet", suffixes=(".parquet",))
class ParquetReader:
    """A Parquet pool holding the image bytes, one row per sample."""

    def read(self, ref: ShardRef) -> pa.Table:
        return read_parquet_shard(ref)

    def fetch_images(self, ref: ShardRef, rows: pa.Table) -> list[bytes | None]:
        """Row ``row_in_shard`` of the sample table is row ``row_in_shard`` of the pool: read only the
        image column again and take those rows."""
        table = read_parquet_table(ref.path)
        image_col, is_struct = _image_column(table, ref.path)
        column = table.column(image_col)
        positions = rows["row_in_shard"].to_pylist()
        values = column.take(pa.array(positions, pa.int64())).to_pylist() if positions else []
        out = []
        for value in values:
            image = _image_bytes(value, is_struct, {})
            out.append(bytes(image) if image else None)
        return out
