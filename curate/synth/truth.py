"""Read back the ground truth of a synthetic pool (for tests and benchmarks)."""

from __future__ import annotations

import glob
import json
import os
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("status", pa.string()),
        pa.field("fault", pa.string()),
        pa.field("scene_label", pa.string()),
        pa.field("near_duplicate_of", pa.string()),
        pa.field("swapped_with", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("true_caption", pa.string()),
        pa.field("language", pa.string()),
        pa.field("text_word", pa.string()),
        pa.field("text_box", pa.list_(pa.int32())),
    ]
)


def _tar_truth(tar_path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar_path, "r|") as tf:
        for member in tf:
            if not member.name.endswith(".json"):
                continue
            f = tf.extractfile(member)
            if f is None:
                continue
            meta = json.loads(f.read())
            out[meta["key"]] = meta.get("gt") or {}
    return out


def load_ground_truth(pool_dir: str) -> pa.Table:
    """One row per sample of the pool (failed downloads included), in shard and key order.

    Columns: uid, key, shard (shard name, e.g. "00000000"), status, fault, scene_label,
    near_duplicate_of, swapped_with, caption (as in the pool), true_caption (an English caption that
    describes the image), language (of ``caption`` where the caption is a scene description),
    text_word and text_box (the word on the scene's sign exactly as drawn, and its [x0, y0, x1, y1]
    box in stored-image pixels; null where the scene has no sign: see ``make_pool(text_rate=...)``).
    For failed downloads the scene fields are null and ``true_caption`` is the caption.
    """
    cols: dict[str, list[Any]] = {name: [] for name in GROUND_TRUTH_SCHEMA.names}
    for pq_path in sorted(glob.glob(os.path.join(pool_dir, "*.parquet"))):
        shard = os.path.basename(pq_path)[: -len(".parquet")]
        rows = pq.read_table(pq_path).to_pylist()
        tar_path = os.path.join(pool_dir, f"{shard}.tar")
        truth = _tar_truth(tar_path) if os.path.exists(tar_path) else {}
        for row in rows:
            gt = truth.get(row["key"], {})
            cols["uid"].append(row["uid"])
            cols["key"].append(row["key"])
            cols["shard"].append(shard)
            cols["status"].append(row["status"])
            cols["fault"].append(row.get("fault") or gt.get("fault"))
            cols["scene_label"].append(gt.get("scene_label"))
            cols["near_duplicate_of"].append(gt.get("near_duplicate_of"))
            cols["swapped_with"].append(gt.get("swapped_with"))
            cols["caption"].append(row["caption"])
            cols["true_caption"].append(gt.get("true_caption", row["caption"]))
            cols["language"].append(gt.get("language", "en"))
            text = gt.get("text") or {}
            cols["text_word"].append(text.get("word"))
            cols["text_box"].append(text.get("box"))
    return pa.Table.from_pydict(cols, GROUND_TRUTH_SCHEMA)
