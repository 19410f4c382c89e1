"""Baseline for bench_ocr: a bare RapidOCR loop over the pool's images (webdataset reading, PIL
decode, the same engine settings as the ocr step), with nothing written: the least work OCR costs."""

from __future__ import annotations

import argparse
import json
import sys

from _pool import decoded_samples

from captioners.ocr import OcrParams, build_engine


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--det-limit-side-len", type=int, default=736)
    args = ap.parse_args()
    engine = build_engine(OcrParams(threads=args.threads, det_limit_side_len=args.det_limit_side_len))
    read = failed = texts = 0
    for _, image in decoded_samples(args.input):
        if image is None:
            failed += 1
            continue
        result, _ = engine(image)
        texts += len(result or ())
        read += 1
    print(json.dumps({"read": read, "failed": failed, "texts": texts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
