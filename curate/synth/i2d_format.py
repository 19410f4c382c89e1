"""img2dataset's on-disk conventions (webdataset output), reproduced without importing img2dataset.

Mirrors img2dataset 1.47 ``downloader.py`` / ``writer.py`` / ``logger.py`` as DataComp calls it
(``input_format="parquet"``, ``save_additional_columns=["uid"]``, ``caption_col="text"``,
``oom_shard_count=8``, ``compute_hash="sha256"``, ``extract_exif=True``), with two deliberate
differences for reproducibility: tar members have a fixed mtime, and stats times are fixed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

OOM_SHARD_COUNT = 8
PARQUET_BUFFER_SIZE = 100  # img2dataset's BufferedParquetWriter flushes every 100 rows
FIXED_TIME = 0.0

# The reader selects save_additional_columns + ["caption"] + ["url"] from the input parquet; the
# downloader appends its own columns; compute_hash="sha256" adds the hash.
I2D_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("url", pa.string()),
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("exif", pa.string()),
        pa.field("sha256", pa.string()),
    ]
)
# Our parquet adds one ground-truth column at the end.
SYNTH_SCHEMA = I2D_SCHEMA.append(pa.field("fault", pa.string()))


def shard_name(shard_id: int, oom_shard_count: int = OOM_SHARD_COUNT) -> str:
    return f"{shard_id:0{oom_shard_count}d}"


def oom_sample_per_shard(number_sample_per_shard: int) -> int:
    return math.ceil(math.log10(number_sample_per_shard))


def compute_key(index: int, shard_id: int, oom_samples: int, oom_shard_count: int = OOM_SHARD_COUNT) -> str:
    """img2dataset downloader.compute_key."""
    true_key = (10**oom_samples) * shard_id + index
    return f"{true_key:0{oom_samples + oom_shard_count}d}"


class ShardWriter:
    """One shard: ``NNNNNNNN.tar`` (successes only) and ``NNNNNNNN.parquet`` (every row)."""

    def __init__(self, output_dir: str, shard_id: int, schema: pa.Schema = SYNTH_SCHEMA) -> None:
        name = shard_name(shard_id)
        self.schema = schema
        self._tar_fd: BinaryIO = open(os.path.join(output_dir, f"{name}.tar"), "wb")  # noqa: SIM115
        self._tar = wds.TarWriter(self._tar_fd, mtime=FIXED_TIME)
        self._pq = pq.ParquetWriter(os.path.join(output_dir, f"{name}.parquet"), schema)
        self._buffer: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any], image: bytes | None, caption: str | None, meta_json: str | None) -> None:
        if image is not None:
            self._tar.write({"__key__": row["key"], "jpg": image, "txt": caption or "", "json": meta_json or "{}"})
        if len(self._buffer) >= PARQUET_BUFFER_SIZE:
            self._flush()
        self._buffer.append(row)

    def _flush(self) -> None:
        if not self._buffer:
            return
        cols = {name: [r[name] for r in self._buffer] for name in self.schema.names}
        self._pq.write_table(pa.Table.from_pydict(cols, self.schema))
        self._buffer = []

    def close(self) -> None:
        self._flush()
        self._pq.close()
        self._tar.close()
        self._tar_fd.close()


def write_stats(
    output_dir: str,
    shard_id: int,
    count: int,
    successes: int,
    failed_to_download: int,
    failed_to_resize: int,
    status_dict: Counter[str],
) -> dict[str, Any]:
    """img2dataset logger.write_stats, with fixed times."""
    stats = {
        "count": count,
        "successes": successes,
        "failed_to_download": failed_to_download,
        "failed_to_resize": failed_to_resize,
        "duration": FIXED_TIME - FIXED_TIME,
        "start_time": FIXED_TIME,
        "end_time": FIXED_TIME,
        "status_dict": dict(status_dict),
    }
    with open(os.path.join(output_dir, f"{shard_name(shard_id)}_stats.json"), "w") as f:
        json.dump(stats, f, indent=4)
    return stats
