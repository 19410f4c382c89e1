"""Export a run as DataComp-style metadata: per shard ``NNNNNNNN.parquet`` (uid, text, url, sizes,
scores) and a row-aligned ``NNNNNNNN.npz`` holding every embedding column of the sidecar.

Rows stay in sidecar order, so row i of the parquet and row i of every npz array are one sample.
``rename`` maps our column names to DataComp's (e.g. ``clip_image_emb`` -> ``l14_img``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.catalog import shard_samples

logger = logging.getLogger(__name__)

_METADATA = {
    "uid": "uid",
    "caption": "text",
    "url": "url",
    "original_width": "original_width",
    "original_height": "original_height",
}


def export_npz(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    where_keep: bool = False,
    rename: dict[str, str] | None = None,
) -> int:
    """Write the export; returns the number of shards. ``where_keep`` exports only kept rows."""
    shards = sorted((Path(run_dir) / "shards").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{run_dir}/shards has no sidecar parquet: is it a finished curate run?")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rename = rename or {}
    for path in shards:
        table = shard_samples(run_dir, int(path.stem))  # with any columns the run left in its source
        if where_keep:
            table = table.filter(pa.compute.field("keep"))
        vectors = [f.name for f in table.schema if pa.types.is_fixed_size_list(f.type)]
        scores = [f.name for f in table.schema if pa.types.is_floating(f.type) and f.name.endswith("score")]
        meta = {new: table[old] for old, new in _METADATA.items() if old in table.column_names}
        meta.update({rename.get(name, name): table[name] for name in scores})
        pq.write_table(pa.table(meta), out / path.name)
        arrays = {}
        for name in vectors:
            column = table[name].combine_chunks()
            width = column.type.list_size
            # .values keeps the slots of null rows (flatten() would drop them and misalign rows).
            values = column.values.slice(column.offset * width, len(column) * width)
            matrix = values.to_numpy(zero_copy_only=False).reshape(len(column), width).copy()
            # Rows without an embedding (failed ones) are NaN: visibly absent, still aligned.
            matrix[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
            arrays[rename.get(name, name)] = matrix
        np.savez(out / path.with_suffix(".npz").name, **arrays)
    logger.info("exported %d shards of %s to %s", len(shards), run_dir, out)
    return len(shards)
