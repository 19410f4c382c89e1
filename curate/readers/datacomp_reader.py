"""Read a DataComp metadata shard: ``X.parquet`` plus the row-aligned ``X.npz`` of embeddings.

Rows are metadata, not images: ``image`` and ``image_ext`` are null and ``status`` is
``success``. The caption is ``text`` (or ``caption``). Besides ``SAMPLE_SCHEMA`` the table has:

- every floating-point column of the parquet (``clip_b32_similarity_score``,
  ``clip_l14_similarity_score``, ...) as a ``float32`` column under its own name;
- every array of the npz under its own name (``b32_img``, ``l14_txt``, ...): a 2-D ``(N, D)``
  array becomes a ``fixed_size_list<float32>[D]`` column (``float16`` when the npz stores
  ``float16``, which halves memory; any other numeric dtype is cast to ``float32``), a 1-D
  array a plain column (``float32``/``float16``, integers keep their type). A name that
  clashes with another column gets the prefix ``npz_``.

Other parquet columns (``face_bboxes`` ...) go to ``meta`` as JSON. The npz is validated
before any array is read (row counts come from the ``.npy`` headers); arrays stored
uncompressed in a local npz (``np.savez``) are memory-mapped, others are read one at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curate.readers.base import InputError, ShardRef
from curate.readers.json_text import json_objects
from curate.readers.parquet_reader import (
    CAPTION_COLUMNS,
    INT_COLUMNS,
    TAKEN_COLUMNS,
    as_int,
    finish_uid,
    is_binary_type,
    meta_json,
    read_parquet_table,
)
from curate.readers.source_sql import cast_sql, meta_json_sql, null_sql
from curate.registry import register_reader
from schemas.tables import DECISION_TYPE, SAMPLE_COLUMNS, SAMPLE_SCHEMA, STATUS_SUCCESS, rows_to_sample_table

logger = logging.getLogger(__name__)

_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header


@dataclass(frozen=True)
class NpzMember:
    name: str  # the array's name (member name without ``.npy``)
    member: str  # the member's name in the zip
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int | None  # where the raw data starts in the npz file, if stored uncompressed


def _read_header(fp: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    return None


def index_npz(path: str) -> list[NpzMember] | None:
    """The arrays of an npz with shapes and dtypes, read from headers only; None if missing."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        return None
    members: list[NpzMember] = []
    try:
        with fs.open(fs_path, "rb") as f, zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as m:
                    header = _read_header(m)
                    header_len = m.tell()
                if header is None:  # a .npy format version this reader does not parse: load to see
                    with zf.open(info) as m:
                        arr = np.lib.format.read_array(m)
                    header = (arr.shape, False, arr.dtype)
                    header_len = None
                data_offset = None
                if info.compress_type == zipfile.ZIP_STORED and header_len is not None:
                    f.seek(info.header_offset + 26)
                    name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
                    data_offset = info.header_offset + _LOCAL_HEADER_SIZE + int(name_len) + int(extra_len)
                    data_offset += header_len
                shape, fortran, dtype = header
                members.append(
                    NpzMember(
                        info.filename[:-4], info.filename, tuple(shape), np.dtype(dtype), bool(fortran), data_offset
                    )
                )
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InputError(f"input.path: {path!r} is not a readable .npz: {exc}") from exc
    return members


def load_npz_array(path: str, member: NpzMember) -> np.ndarray:
    """One array of the npz: memory-mapped when local and uncompressed, else read from the zip."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if isinstance(fs, LocalFileSystem) and member.data_offset is not None and not member.dtype.hasobject:
        return np.memmap(
            fs_path,
            dtype=member.dtype,
            mode="r",
            offset=member.data_offset,
            shape=member.shape,
            order="F" if member.fortran_order else "C",
        )
    with fs.open(fs_path, "rb") as f, zipfile.ZipFile(f) as zf, zf.open(member.member) as m:
        return np.lib.format.read_array(m)


def embedding_array(arr: np.ndarray) -> pa.Array:
    """``(N, D)`` -> fixed_size_list<float32|float16>[D]; ``(N,)`` -> a plain column."""
    if arr.dtype == np.float16:
        target = np.dtype(np.float16)
    elif arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
        target = arr.dtype
    else:
        target = np.dtype(np.float32)
    if arr.ndim == 1:
        return pa.array(np.array(arr, dtype=target, copy=True))
    n = arr.shape[0]
    flat = np.array(arr.reshape(n, -1), dtype=target, order="C", copy=True)
    width = flat.shape[1]
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), width)


def _check_alignment(npz_path: str, parquet_path: str, members: list[NpzMember] | None, rows: int) -> None:
    """That the npz exists (``members`` not None) and every array has the parquet's ``rows``."""
    if members is None:
        raise InputError(f"input.path: DataComp shard {parquet_path!r} has no embeddings file {npz_path!r}")
    for m in members:
        if not m.shape or m.shape[0] != rows:
            raise InputError(
                f"input.path: {npz_path!r} array {m.name!r} has shape {m.shape} but {parquet_path!r} has "
                f"{rows} rows; the two files of a DataComp shard must be row-aligned"
            )


def _npz_names(npz_path: str, members: list[NpzMember], taken: set[str]) -> list[tuple[str, NpzMember]]:
    """The column name of each numeric array of the npz (``npz_`` + its name where that is taken)."""
    named: list[tuple[str, NpzMember]] = []
    for m in members:
        if not np.issubdtype(m.dtype, np.number) or np.issubdtype(m.dtype, np.complexfloating):
            logger.warning("%s: array %r has dtype %s, not numeric; skipped", npz_path, m.name, m.dtype)
            continue
        names = {name for name, _ in named}
        named.append((m.name if m.name not in taken and m.name not in names else f"npz_{m.name}", m))
    return named


def _score_columns(schema: pa.Schema, caption_col: str | None) -> list[str]:
    """Float columns of the parquet that no sample column takes: DataComp's CLIP scores."""
    return [
        f.name
        for f in schema
        if pa.types.is_floating(f.type) and f.name not in SAMPLE_COLUMNS and f.name != caption_col
    ]


def _caption_column(names: list[str]) -> str | None:
    return next((c for c in CAPTION_COLUMNS if c in names), None)


def _npz_path(ref: ShardRef) -> str:
    return ref.path.rsplit(".", 1)[0] + ".npz"


def _file_stamp(path: str) -> tuple:
    """What tells a changed file apart: its size and modification time (or ETag). A local path is
    asked of the OS directly (each stage and the sink ask, for two files a shard)."""
    if "://" not in path or path.startswith("file://"):
        try:
            stat = os.stat(path.removeprefix("file://"))
        except FileNotFoundError:
            return (None,)
        return (stat.st_size, stat.st_mtime_ns)
    fs, fs_path = fsspec.core.url_to_fs(path)
    try:
        info = fs.info(fs_path)
    except FileNotFoundError:
        return (None,)
    return (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))


@dataclass(frozen=True)
class ShardHeader:
    """What ``read_datacomp_shard`` makes of a shard, known from its headers alone."""

    parquet_names: tuple[str, ...]
    parquet_schema: pa.Schema
    rows: int
    score_columns: tuple[str, ...]
    arrays: tuple[tuple[str, NpzMember], ...]  # every numeric array of the npz, by its column name
    npz_members: tuple[NpzMember, ...] | None  # None: the shard has no npz

    def check_alignment(self, ref: ShardRef) -> None:
        _check_alignment(_npz_path(ref), ref.path, self.npz_members, self.rows)

    @property
    def embeddings(self) -> dict[str, NpzMember]:
        """The 2-D arrays (embeddings), which a read may leave out."""
        return {name: m for name, m in self.arrays if len(m.shape) == 2}

    @property
    def column_names(self) -> list[str]:
        return [*SAMPLE_COLUMNS, *self.score_columns, *(name for name, _ in self.arrays)]


def _header(ref: ShardRef) -> ShardHeader:
    """The shard's header, asked several times for each shard of a run (each stage, the sink), read
    once while the files stay the same."""
    npz_path = _npz_path(ref)
    return _header_of(ref.path, npz_path, _file_stamp(ref.path), _file_stamp(npz_path))


@functools.lru_cache(maxsize=4096)
def _header_of(path: str, npz_path: str, *_stamps: tuple) -> ShardHeader:
    try:
        with fsspec.open(path, "rb") as f:
            metadata = pq.read_metadata(f)
    except FileNotFoundError as exc:
        raise InputError(f"input.path: {path!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"input.path: {path!r} is not a readable Parquet file: {exc}") from exc
    schema = metadata.schema.to_arrow_schema()
    scores = _score_columns(schema, _caption_column(schema.names))
    members = index_npz(npz_path)
    arrays = _npz_names(npz_path, members or [], {*SAMPLE_COLUMNS, *scores})
    npz = None if members is None else tuple(members)
    return ShardHeader(tuple(schema.names), schema, metadata.num_rows, tuple(scores), tuple(arrays), npz)


# Columns of a shard without status or error_message columns that are the same on every row, or a
# function of the row's place (``_constant_column``): stage 0 of a recipe starting with a global
# step stores them and the named scores, and reads no text (``read_columns``).
_PLACE_COLUMNS = ("source", "shard_index", "row_in_shard", "shard_rows")
_CONSTANT_COLUMNS = ("status", "error_message", "keep", "drop_reason", "decisions")


def _constant_column(name: str, ref: ShardRef, n: int) -> pa.Array:
    """A column that a shard without status columns has the same on every row, or by its place.
    Arrow repeats the values: an array of Python objects would be converted one by one (and makes
    pyarrow import pandas, most of a second at a worker's first shard)."""
    field = SAMPLE_SCHEMA.field(name)
    repeated = {"source": ref.path, "shard_index": ref.index, "shard_rows": n, "status": STATUS_SUCCESS, "keep": True}
    if name in repeated:
        return pa.repeat(pa.scalar(repeated[name], field.type), n)
    if name == "row_in_shard":
        return pa.array(np.arange(n, dtype=np.int32))
    if name == "decisions":
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], DECISION_TYPE))
    return pa.nulls(n, field.type)


def _projected(ref: ShardRef, header: ShardHeader, names: list[str]) -> pa.Table | None:
    """``names`` of the shard read from the parquet's uid and score columns and the npz alone, or None
    if one of them needs the whole read (text, uids to make canonical, or a shard whose status comes
    from its own columns)."""
    if {"status", "error_message"} & set(header.parquet_names):
        return None
    arrays = dict(header.arrays)
    known = {*_PLACE_COLUMNS, *_CONSTANT_COLUMNS, *header.score_columns, *arrays}
    schema = header.parquet_schema
    if _has_columnar_schema(schema, _caption_column(schema.names)):
        known.add("uid")  # read as it is, if every uid is canonical
    if any(name not in known for name in names):
        return None
    header.check_alignment(ref)  # a misaligned shard fails as the whole read does
    n = header.rows
    read = [name for name in names if name in header.score_columns or name == "uid"]
    table = read_parquet_table(ref.path, read) if read else None
    if "uid" in read and not _canonical_uids(table["uid"]):
        return None
    fields, columns = [], []
    for name in header.column_names:
        if name not in names:
            continue
        if name == "uid":
            fields.append(SAMPLE_SCHEMA.field(name))
            columns.append(table[name].cast(pa.string()))
        elif name in header.score_columns:
            fields.append(pa.field(name, pa.float32()))
            columns.append(table[name].cast(pa.float32()))
        elif name in arrays:
            columns.append(embedding_array(load_npz_array(_npz_path(ref), arrays[name])))
            fields.append(pa.field(name, columns[-1].type))
        else:
            fields.append(SAMPLE_SCHEMA.field(name))
            columns.append(_constant_column(name, ref, n))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def read_datacomp_shard(ref: ShardRef, arrays: list[str] | None = None) -> pa.Table:
    """The shard's sample table; ``arrays``: only these of its embedding columns (None: all)."""
    table = read_parquet_table(ref.path)
    n = table.num_rows
    npz_path = _npz_path(ref)
    header = _header(ref)
    _check_alignment(npz_path, ref.path, header.npz_members, n)  # before any work: a misaligned shard fails fast
    caption_col = _caption_column(table.column_names)
    score_cols = _score_columns(table.schema, caption_col)
    meta_cols = _meta_columns(table.schema, caption_col, score_cols)
    out = _columnar_samples(table, ref, caption_col, meta_cols)
    if out is None:
        out = _row_samples(table, ref, caption_col, meta_cols)
    for name in score_cols:
        out = out.append_column(pa.field(name, pa.float32()), table.column(name).cast(pa.float32()))
    skip = set() if arrays is None else set(header.embeddings) - set(arrays)
    for name, member in header.arrays:  # named as for ``taken``: the sample and score columns
        if name not in skip:
            out = out.append_column(name, embedding_array(load_npz_array(npz_path, member)))
    logger.debug("%s: %d rows, extra columns %s", ref.path, n, out.column_names[len(SAMPLE_COLUMNS) :])
    return out


def _row_samples(table: pa.Table, ref: ShardRef, caption_col: str | None, meta_cols: list[str]) -> pa.Table:
    """The sample table row by row, through the readers' shared conversions (uids normalised or
    derived, any status, sizes of any numeric type)."""
    n = table.num_rows
    wanted = {caption_col, "uid", *TAKEN_COLUMNS, *meta_cols}
    columns = {name: table.column(name).to_pylist() for name in table.column_names if name in wanted}
    rows: list[dict[str, Any]] = []
    for i in range(n):
        meta = {name: columns[name][i] for name in meta_cols if columns[name][i] is not None}
        row: dict[str, Any] = {name: columns[name][i] for name in TAKEN_COLUMNS if name in columns}
        caption = None if caption_col is None else columns[caption_col][i]
        row["caption"] = None if caption is None else str(caption)
        if row.get("key") is not None:
            row["key"] = str(row["key"])
        for name in INT_COLUMNS:
            row[name] = as_int(row.get(name))
        row.update(image=None, image_ext=None, status=row.get("status") or STATUS_SUCCESS)
        finish_uid(row, columns["uid"][i] if "uid" in columns else None, meta)
        row.update(source=ref.path, shard_index=ref.index, row_in_shard=i, shard_rows=n, meta=meta_json(meta))
        rows.append(row)
    return rows_to_sample_table(rows)


_UID_PATTERN = "^[0-9a-f]{32}$"
_TEXT_COLUMNS = ("url", "sha256", "error_message")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _has_columnar_schema(schema: pa.Schema, caption_col: str | None) -> bool:
    """Whether a shard's columns have DataComp's own types, which ``_columnar_samples`` converts by
    casts alone (if its uids are canonical too): uid and the other text as strings, sizes as
    integers, a key as text or an integer, no status column."""
    names = schema.names
    if "uid" not in names or "status" in names or not _is_text(schema.field("uid").type):
        return False
    if any(not _is_text(schema.field(c).type) for c in _text_columns(schema, caption_col)):
        return False
    if "key" in names and not (_is_text(schema.field("key").type) or pa.types.is_integer(schema.field("key").type)):
        return False
    return not any(c in names and not pa.types.is_integer(schema.field(c).type) for c in INT_COLUMNS)


def _text_columns(schema: pa.Schema, caption_col: str | None) -> list[str]:
    return [c for c in (*_TEXT_COLUMNS, caption_col) if c is not None and c in schema.names]


def _canonical_uids(uid: pa.ChunkedArray) -> bool:
    """Whether every uid is already 32 lowercase hex characters (no row needs ``finish_uid``)."""
    return not uid.null_count and (not len(uid) or pc.all(pc.match_substring_regex(uid, _UID_PATTERN)).as_py())


def _meta_columns(schema: pa.Schema, caption_col: str | None, score_cols: list[str]) -> list[str]:
    """The parquet columns that go to ``meta``: those no sample column takes, but bytes."""
    consumed = {caption_col, "uid", *TAKEN_COLUMNS, *score_cols}
    return [f.name for f in schema if f.name not in consumed and not is_binary_type(f.type)]


def _columnar_samples(table: pa.Table, ref: ShardRef, caption_col: str | None, meta_cols: list[str]) -> pa.Table | None:
    """The sample table column by column, exactly as ``_row_samples`` builds it, for DataComp's own
    shape of metadata: uids already canonical, no status column, text as strings and sizes as
    integers. ``None`` when a column needs the row path's conversions. Only ``meta`` (the JSON of
    columns no sample column takes, e.g. ``face_bboxes``) is still built per row."""
    n = table.num_rows
    schema = table.schema
    if not _has_columnar_schema(schema, caption_col) or not _canonical_uids(table["uid"]):
        return None
    cast_from = _cast_sources(schema, caption_col)

    def column(field: pa.Field) -> pa.Array | pa.ChunkedArray:
        name = cast_from[field.name]
        return pa.nulls(n, field.type) if name is None else table[name].cast(field.type)

    by_name = {
        "uid": table["uid"].cast(pa.string()),
        "meta": _meta_column(table, meta_cols),
        **{name: _constant_column(name, ref, n) for name in _BY_PLACE},
    }
    arrays = [by_name[f.name] if f.name in by_name else column(f) for f in SAMPLE_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SAMPLE_SCHEMA)


_BY_PLACE = (*_PLACE_COLUMNS, "status", "keep", "decisions")


def _cast_sources(schema: pa.Schema, caption_col: str | None) -> dict[str, str | None]:
    """For each sample column the columnar path makes by a cast, the parquet column it casts (None:
    a null column): the caption, the other text, the key and the sizes. ``uid``, ``meta``, the place
    columns, the status, ``keep`` and the decisions are made otherwise."""
    taken = {*_text_columns(schema, caption_col), "key", *INT_COLUMNS}
    made = {"uid", "meta", *_BY_PLACE}
    sources: dict[str, str | None] = {}
    for f in SAMPLE_SCHEMA:
        if f.name == "caption":
            sources[f.name] = caption_col
        elif f.name not in made:
            sources[f.name] = f.name if f.name in taken and f.name in schema.names else None
    return sources


# Columns a sidecar always holds: the identity, the place, the bookkeeping (and no image bytes).
_SIDECAR_COLUMNS = ("uid", *_PLACE_COLUMNS, *_CONSTANT_COLUMNS, "image")


@functools.lru_cache(maxsize=4096)
def _sql_columns_of(path: str, npz_path: str, *stamps: tuple) -> tuple[tuple[str, str], ...]:
    """``sql_columns`` of the shard, once a process while its files stay the same; none if its uids
    are not canonical (the per-row path then adds ``source_uid`` to ``meta``)."""
    header = _header_of(path, npz_path, *stamps)
    columns = sql_columns(header)
    if columns and not _canonical_uids(read_parquet_table(path, ["uid"])["uid"]):
        return ()
    return tuple(columns.items())


# Columns DuckDB's read_parquet(filename = true, file_row_number = true) adds: a source with one cannot be joined.
_DUCKDB_VIRTUAL = ("filename", "file_row_number")


def sql_columns(header: ShardHeader) -> dict[str, str]:
    """The columns of ``read_datacomp_shard`` that DuckDB rebuilds from the shard's parquet alone
    (``readers.source_sql``), for a shard of DataComp's own types; {} for any other (its rows need
    conversions one by one). The uid stays out: that a shard's uids are canonical needs its values."""
    schema = header.parquet_schema
    caption_col = _caption_column(schema.names)
    if not _has_columnar_schema(schema, caption_col) or set(_DUCKDB_VIRTUAL) & set(schema.names):
        return {}
    columns: dict[str, str] = {}
    for name, source in _cast_sources(schema, caption_col).items():
        if name in _SIDECAR_COLUMNS:
            continue
        field_type = SAMPLE_SCHEMA.field(name).type
        columns[name] = null_sql(field_type) if source is None else cast_sql(source, field_type)
    meta = meta_json_sql(schema, _meta_columns(schema, caption_col, list(header.score_columns)))
    if meta is not None:
        columns["meta"] = meta
    for name in header.score_columns:
        columns[name] = cast_sql(name, pa.float32())
    return columns


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _meta_column(table: pa.Table, meta_cols: list[str]) -> pa.Array:
    """``meta`` as ``_row_samples`` builds it (``meta_json`` of the row's non-null values). Numbers
    and lists of them (DataComp's ``face_bboxes``) are encoded by Arrow kernels (``json_objects``).
    Otherwise rows whose every meta value is null or an empty list have one of a few JSON texts,
    found without a Python call per row, and only the others go through ``meta_json`` one by one."""
    n = table.num_rows
    if not meta_cols:
        return pa.nulls(n, pa.string())
    plain = all(_is_plain(table[c]) for c in meta_cols)
    if plain:  # numbers, booleans and lists of them json_objects encodes with no Python call per row
        texts = json_objects({c: table[c] for c in meta_cols})
        if texts is not None:
            return texts.cast(pa.string())
    trivial = np.ones(n, dtype=bool)
    pattern = np.zeros(n, dtype=np.int64)  # bit j: meta column j holds an empty list (not null)
    for j, name in enumerate(meta_cols):
        column = table[name]
        null = pc.is_null(column).to_numpy(zero_copy_only=False)
        empty = np.zeros(n, dtype=bool)
        if _is_list(column.type):
            empty = pc.fill_null(pc.equal(pc.list_value_length(column), 0), False).to_numpy(zero_copy_only=False)
        trivial &= null | empty
        pattern |= empty.astype(np.int64) << j
    texts = np.empty(n, dtype=object)
    for bits in np.unique(pattern[trivial]):
        texts[trivial & (pattern == bits)] = meta_json({c: [] for j, c in enumerate(meta_cols) if bits >> j & 1})
    rest = np.flatnonzero(~trivial)
    if len(rest):
        taken = [table[c].take(pa.array(rest)) for c in meta_cols]
        # Values json_safe would return unchanged (numbers, finite; text; lists of them) go to
        # json.dumps as they are: the same text, at half the cost.
        encode = _plain_json if plain else meta_json
        values = [v.to_pylist() for v in taken]
        for i, row in zip(rest, zip(*values, strict=True), strict=True):
            texts[i] = encode({c: v for c, v in zip(meta_cols, row, strict=True) if v is not None})
    return pa.array(texts, pa.string())


def _plain_json(meta: dict[str, Any]) -> str | None:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else None


def _is_plain(values: pa.ChunkedArray | pa.Array) -> bool:
    """Whether every value is a number (finite), a bool, a text or a list of those."""
    while _is_list(values.type):
        values = pc.list_flatten(values)
    t = values.type
    if pa.types.is_floating(t):
        return pc.all(pc.fill_null(pc.is_finite(values), True)).as_py() is not False
    return pa.types.is_integer(t) or pa.types.is_boolean(t) or _is_text(t) or pa.types.is_null(t)


def check_datacomp_shard(ref: ShardRef) -> None:
    """Row alignment of a shard's parquet and npz from their headers alone (no data is read)."""
    _header(ref).check_alignment(ref)


@register_reader("datacomp", suffixes=(".parquet",), has_images=False)
class DataCompReader:
    """DataComp metadata: parquet + row-aligned npz of embeddings; no images."""

    def read(self, ref: ShardRef, arrays: list[str] | None = None) -> pa.Table:
        return read_datacomp_shard(ref, arrays)

    def fetch_images(self, ref: ShardRef, rows: pa.Table) -> list[bytes | None]:
        return [None] * rows.num_rows  # metadata only: reshard the subset against the downloaded pool

    def array_columns(self, ref: ShardRef) -> list[str]:
        """The embedding columns (the npz's 2-D arrays), which ``read_arrays`` reads again alone:
        memory-mapped, they cost less to read again than to store (``curate.stage_store``)."""
        return list(_header(ref).embeddings)

    def column_names(self, ref: ShardRef) -> list[str]:
        """Every column of ``read(ref)``, in its order, from the headers."""
        return _header(ref).column_names

    def read_columns(self, ref: ShardRef, names: list[str]) -> pa.Table:
        """Columns ``names`` of ``read(ref)`` in its order: scores, embeddings and the columns the same
        on every row without reading the text, any others by the whole read."""
        header = _header(ref)
        table = _projected(ref, header, names)
        if table is not None:
            return table
        wanted = set(names)
        full = read_datacomp_shard(ref, [name for name in header.embeddings if name in wanted])
        return full.select([name for name in full.column_names if name in wanted])

    def sql_columns(self, ref: ShardRef) -> dict[str, str]:
        npz_path = _npz_path(ref)
        return dict(_sql_columns_of(ref.path, npz_path, _file_stamp(ref.path), _file_stamp(npz_path)))

    def read_arrays(self, ref: ShardRef, names: list[str]) -> pa.Table:
        """Columns of ``array_columns`` exactly as ``read`` makes them, without the rest of the shard."""
        by_name = _header(ref).embeddings
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(f"input.path: {_npz_path(ref)!r} no longer has the arrays {missing}; the source changed")
        return pa.table({n: embedding_array(load_npz_array(_npz_path(ref), by_name[n])) for n in names})

    def preflight(self, refs: list[ShardRef], column_params: dict[str, str]) -> None:
        """Row alignment of every shard, and that the columns steps read exist in the metadata (a
        metadata-only pool has no step that could produce them)."""
        for ref in refs:
            check_datacomp_shard(ref)
        if not column_params:
            return
        first = refs[0].path
        with fsspec.open(first, "rb") as f:
            available = set(pq.read_schema(f).names)
        available |= {m.name for m in index_npz(first.rsplit(".", 1)[0] + ".npz") or []}
        for field, column in column_params.items():
            if column not in available:
                raise InputError(
                    f"{field}: value {column!r} is not a column of {first!r} or its npz; available: {sorted(available)}"
                )
