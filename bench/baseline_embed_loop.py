"""Baseline for bench_embed: a bare open_clip forward loop over the pool's images and captions
(webdataset reading, PIL decode, the model's own preprocess, batched inference, cosine score),
with nothing written: the least work a CLIP score can cost."""

from __future__ import annotations

import argparse
import json
import sys

import open_clip
import torch
from _pool import decoded_samples

from curate.models import TINY_CLIP_NAME, TINY_CLIP_WEIGHTS, register_tiny_clip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    register_tiny_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=str(TINY_CLIP_WEIGHTS), image_resize_mode="squash"
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    scored = failed = 0
    images, texts = [], []

    def flush() -> None:
        nonlocal scored
        with torch.inference_mode():
            img = model.encode_image(torch.stack(images), normalize=True)
            txt = model.encode_text(tokenizer(texts), normalize=True)
            scored += len((img * txt).sum(-1))
        images.clear()
        texts.clear()

    for sample, image in decoded_samples(args.input):
        if image is None:
            failed += 1
            continue
        images.append(preprocess(image))
        texts.append(sample["txt"].decode("utf-8", errors="replace"))
        if len(images) == args.batch_size:
            flush()
    if images:
        flush()
    print(json.dumps({"scored": scored, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
