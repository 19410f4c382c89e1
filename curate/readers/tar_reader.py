"""Read WebDataset tars, plain or as img2dataset wrote them (``.tar`` + ``.parquet``).

img2dataset's parquet lists every sample, failed downloads included, so when it is present it
is the authority on which rows exist: successes come from the tar, failures stay as failed
rows, and a success the tar does not hold (a truncated tar) becomes ``failed_to_read``.
Without a parquet, rows are the tar's samples in order, and a truncation is recorded as one
failed row that says where the tar broke. A key that comes back later in the tar (not adjacent to
its first sample) would silently merge two samples; the first stays whole and the second becomes
a failed row (``failed_duplicate_key``).

Each row records where its image bytes are in the tar (``image_offset``, ``image_size``), so that
later stages and the sink fetch them by byte range (``fetch_images``), locally or from S3.
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curate.identity import derive_uid, normalize_uid, sha256_hex
from curate.readers.base import ShardRef
from curate.registry import register_reader
from schemas.tables import (
    SAMPLE_COLUMNS,
    STATUS_DUPLICATE_KEY,
    STATUS_FAILED_READ,
    STATUS_SUCCESS,
    rows_to_sample_table,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
_INT_COLUMNS = ("width", "height", "original_width", "original_height")


@dataclass
class TarSample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    # (offset, size) of each member's data in the tar file; absent for a compressed tar.
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicate_of_member: int | None = None  # set when the key already named an earlier sample


@dataclass
class TarContents:
    samples: list[TarSample]
    error: str | None  # why reading stopped early, if it did


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def _missing_end_marker(path: str) -> str | None:
    """Python's tarfile ends quietly when data stops at a header boundary; a whole tar ends
    with two zero blocks, so look for them to tell a complete tar from a cut one."""
    try:
        with fsspec.open(path, "rb") as f:
            size = f.seek(0, 2)
            if size % 512:
                return f"tar size {size} is not a multiple of 512 bytes"
            f.seek(max(0, size - 1024))
            if f.read(1024).strip(b"\0"):
                return "tar has no end-of-archive marker"
    except (OSError, ValueError) as exc:  # unseekable streams cannot be checked
        logger.debug("%s: end marker not checked: %s", path, exc)
    return None


def iter_tar(path: str) -> TarContents:
    samples: list[TarSample] = []
    by_key: dict[str, TarSample] = {}
    current: TarSample | None = None
    error = None
    try:
        with fsspec.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            # Offsets are positions in the file only when the tar is not compressed.
            plain = getattr(tar.fileobj, "comptype", "tar") == "tar"
            for number, info in enumerate(tar):
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                data = tar.extractfile(info).read()
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name!r} is truncated")
                if current is None or current.key != key:
                    current = TarSample(key)
                    if key in by_key:
                        current.duplicate_of_member = number
                    else:
                        by_key[key] = current
                    samples.append(current)
                current.members[ext] = data
                if plain:
                    current.spans[ext] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error is None:
        error = _missing_end_marker(path)
    if error is not None:
        # The sample being read when the tar broke may be missing members; drop it so that a
        # half-read sample is never passed on as if it were whole.
        if samples:
            last = samples.pop()
            if by_key.get(last.key) is last:
                del by_key[last.key]
        error = f"tar unreadable after {len(samples)} whole samples: {error}"
        logger.warning("%s: %s", path, error)
    return TarContents(samples, error)


def _decode_text(data: bytes, meta: dict, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        meta[f"{what}_encoding_error"] = str(exc)
        return data.decode("utf-8", errors="replace")


def _sample_fields(sample: TarSample) -> dict:
    """Columns from a tar sample's members: image, caption from txt, the json's fields."""
    meta: dict = {}
    row: dict = {"key": sample.key}
    if "json" in sample.members:
        text = _decode_text(sample.members["json"], meta, "json")
        try:
            loaded = json.loads(text)
            if isinstance(loaded, dict):
                meta.update(loaded)
            else:
                meta["json_value"] = loaded
        except json.JSONDecodeError as exc:
            meta["json_error"] = f"invalid json member: {exc}"
    if "txt" in sample.members:
        meta["caption"] = _decode_text(sample.members["txt"], meta, "caption")
    for ext in IMAGE_EXTENSIONS:
        if ext in sample.members:
            row["image"] = sample.members[ext]
            row["image_ext"] = "jpg" if ext == "jpeg" else ext
            row["image_offset"], row["image_size"] = sample.spans.get(ext, (None, None))
            break
    row["meta"] = meta
    return row


def _duplicate_row(sample: TarSample, ref: ShardRef) -> dict:
    row = _finish_row(_sample_fields(sample), {}, ref)
    row.update(image=None, image_offset=None, image_size=None, status=STATUS_DUPLICATE_KEY)
    row["error_message"] = (
        f"duplicate_key: key {sample.key!r} appears again at tar member {sample.duplicate_of_member}, apart from "
        "its first sample; the first is kept whole and this one is not read"
    )
    return row


def _finish_row(row: dict, extra: dict, ref: ShardRef) -> dict:
    """Move known fields out of the merged metadata into columns; the rest stays in ``meta``."""
    meta = {**extra, **row.pop("meta", {})}
    for name in SAMPLE_COLUMNS:
        if name in meta and name not in ("meta", "image", "decisions", "keep", "drop_reason"):
            value = meta.pop(name)
            if row.get(name) is None:
                row[name] = value
    for name in _INT_COLUMNS:
        value = row.get(name)
        row[name] = int(value) if isinstance(value, int | float) and value == value else None
    row["key"] = None if row.get("key") is None else str(row["key"])
    image = row.get("image")
    if image is not None and not row.get("sha256"):
        row["sha256"] = sha256_hex(image)
    status = row.get("status") or STATUS_SUCCESS
    if status == STATUS_SUCCESS and not image:
        status = STATUS_FAILED_READ
        row["error_message"] = row.get("error_message") or "sample has no image member"
    row["status"] = status
    row["uid"] = normalize_uid(row.get("uid")) or derive_uid(row.get("url"), row.get("caption"), row.get("sha256"))
    row["source"] = ref.path
    row["shard_index"] = ref.index
    row["meta"] = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str) if meta else None
    return row


def _parquet_rows(path: str) -> list[dict]:
    with fsspec.open(path, "rb") as f:
        return pq.ParquetFile(f).read().to_pylist()  # one file: no dataset layer (read_table's)


def read_tar_shard(ref: ShardRef) -> pa.Table:
    contents = iter_tar(ref.path)
    firsts = [s for s in contents.samples if s.duplicate_of_member is None]
    duplicates = [_duplicate_row(s, ref) for s in contents.samples if s.duplicate_of_member is not None]
    rows: list[dict] = []
    if ref.format == "img2dataset":
        listed = _parquet_rows(ref.path.rsplit(".", 1)[0] + ".parquet")
        in_tar = {s.key: s for s in firsts}
        for record in listed:
            record = {k: v for k, v in record.items() if not isinstance(v, bytes)}
            key = None if record.get("key") is None else str(record["key"])
            sample = in_tar.pop(key, None)
            if sample is not None:
                rows.append(_finish_row(_sample_fields(sample), record, ref))
                continue
            row = _finish_row({"key": key}, record, ref)
            if row["status"] == STATUS_FAILED_READ:
                row["error_message"] = contents.error or "listed as success but missing from the tar"
            rows.append(row)
        # Samples in the tar that the parquet does not list are still samples.
        rows.extend(_finish_row(_sample_fields(s), {}, ref) for s in in_tar.values())
    else:
        rows.extend(_finish_row(_sample_fields(s), {}, ref) for s in firsts)
        if contents.error:
            rows.append(
                _finish_row(
                    {"key": f"__truncated_{len(contents.samples)}__", "meta": {}},
                    {"status": STATUS_FAILED_READ, "error_message": contents.error, "url": f"{ref.path}#truncated"},
                    ref,
                )
            )
    rows.extend(duplicates)
    for i, row in enumerate(rows):
        row["row_in_shard"] = i
        row["shard_rows"] = len(rows)
    return rows_to_sample_table(rows)


def _fetch_by_member(path: str, keys: list[str | None]) -> list[bytes | None]:
    """Image bytes by key, reading the tar again (a compressed tar has no usable offsets)."""
    wanted = {k for k in keys if k is not None}
    found = {s.key: s for s in iter_tar(path).samples if s.key in wanted and s.duplicate_of_member is None}
    out = []
    for key in keys:
        sample = found.get(key) if key is not None else None
        image = _sample_fields(sample).get("image") if sample is not None else None
        out.append(image)
    return out


@register_reader("img2dataset", suffixes=(".tar",))
@register_reader("webdataset", suffixes=(".tar",))
class TarReader:
    """WebDataset tars; with img2dataset's parquet beside them, that parquet lists the rows."""

    def read(self, ref: ShardRef) -> pa.Table:
        return read_tar_shard(ref)

    def fetch_images(self, ref: ShardRef, rows: pa.Table) -> list[bytes | None]:
        offsets = rows["image_offset"].to_pylist()
        sizes = rows["image_size"].to_pylist()
        keys = rows["key"].to_pylist()
        ranged = [i for i, (o, n) in enumerate(zip(offsets, sizes, strict=True)) if o is not None and n is not None]
        out: list[bytes | None] = [None] * rows.num_rows
        if ranged:
            fs, _, (path,) = fsspec.get_fs_token_paths(ref.path)
            # One request per sample, issued concurrently by filesystems that can (s3fs, http).
            blobs = fs.cat_ranges(
                [path] * len(ranged), [offsets[i] for i in ranged], [offsets[i] + sizes[i] for i in ranged]
            )
            for i, blob in zip(ranged, blobs, strict=True):
                out[i] = bytes(blob)
        unranged = [i for i in range(rows.num_rows) if out[i] is None and offsets[i] is None and keys[i]]
        if unranged:
            for i, blob in zip(unranged, _fetch_by_member(ref.path, [keys[i] for i in unranged]), strict=True):
                out[i] = blob
        return out
