"""Baseline for bench_detect: a bare ultralytics ``model.predict`` loop over the pool's images
(webdataset reading, the same once-only decode as the ``detect`` step, batched predict with the
same arguments), with nothing written: the least work the step's boxes can cost."""

from __future__ import annotations

import argparse
import json
import sys
import time

import braceexpand
import webdataset as wds

from captioners.detector import TINY_YOLO_WEIGHTS, _ultralytics, decode_for_detection


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU Ray actor gets 1)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = _ultralytics().YOLO(str(TINY_YOLO_WEIGHTS), task="detect")
    detected = failed = boxes = 0
    images = []
    predict_s = 0.0

    def flush() -> None:
        nonlocal detected, boxes, predict_s
        t0 = time.perf_counter()
        results = model.predict(
            images, imgsz=args.imgsz, conf=0.25, iou=0.7, max_det=20, device="cpu", half=False,
            batch=len(images), rect=False, verbose=False, save=False,
        )  # fmt: skip
        predict_s += time.perf_counter() - t0
        detected += len(results)
        boxes += sum(len(r.boxes) for r in results)
        images.clear()

    for tar in braceexpand.braceexpand(args.input):
        for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
            try:
                images.append(decode_for_detection(sample["jpg"], args.imgsz))
            except Exception:  # noqa: BLE001
                failed += 1
                continue
            if len(images) == args.batch_size:
                flush()
    if images:
        flush()
    print(json.dumps({"detected": detected, "failed": failed, "boxes": boxes, "predict_seconds": predict_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
