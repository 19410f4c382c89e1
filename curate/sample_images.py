"""The image bytes of a run's samples, read again from the run's input by byte range.

A run's Parquet holds no pixels; every sample row names its input shard (``shard_index``,
``source``) and where its image lies there (``image_offset``, ``image_size``), so any sample,
kept or dropped, can be shown without the output tars (a dropped one is in none of them).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.readers.base import ShardRef, fetch_images, list_shards
from curate.rundir import RunDir


class RunImages:
    """Fetches images of one run's samples; lists its input shards once."""

    def __init__(self, run: RunDir):
        # The resolved recipe's input alone (validating the whole recipe would import every step's model code).
        spec = yaml.safe_load((run.root / "recipe.yaml").read_text())["input"]
        if spec["format"] == "urls":
            refs = list_shards(f"{run.download}/*.tar", "img2dataset")
        else:
            refs = list_shards(spec["path"], spec["format"])
        self.refs = {r.index: r for r in refs}

    def fetch(self, rows: pa.Table) -> list[bytes | None]:
        """Bytes for each row of ``rows`` (sample rows with shard_index and the image's byte range), in
        order; None where a row has no image (a failed download) or its input is gone."""
        out: list[bytes | None] = [None] * rows.num_rows
        shard_ids = rows["shard_index"].to_numpy(zero_copy_only=False)
        for shard_index in sorted(set(shard_ids.tolist())):
            ref: ShardRef | None = self.refs.get(int(shard_index))
            if ref is None:
                continue
            where = pc.indices_nonzero(pc.equal(rows["shard_index"], int(shard_index))).to_pylist()
            for i, data in zip(where, fetch_images(ref, rows.take(where)), strict=True):
                out[i] = data
        return out
