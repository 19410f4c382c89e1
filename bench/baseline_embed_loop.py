"""Baseline for bench_embed: a bare open_clip forward loop that does what the clip_embed step does
per image and caption and nothing else: the least work a CLIP score can cost.

The same work as ``filters/clip_embed.py``: webdataset reading, each JPEG decoded once in draft mode
at the model's input size (the step's own ``decode_image``), the model's own validation transform,
image and text towers on batches of ``--batch-size`` images and their captions (the recipe's
``inference_batch_size``; full batches within a shard, where the step's batch loses its
undecodable rows), L2-normalised embeddings and their cosine. Nothing is written and nothing is
recorded per row, so every other cost of a curate run (Ray, the sidecars and shards it writes)
shows in the ratio.

``--processes 1``: one process, torch on its default threads (every core). ``--processes N``: the
same work per shard in a pool of N processes with cores / N torch threads each, so that decoding,
which one process does serially, runs on every core too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial

import open_clip
import torch
import webdataset as wds
from _pool import map_shards

from curate.models import TINY_CLIP_NAME, TINY_CLIP_RESIZE_MODE, TINY_CLIP_WEIGHTS, register_tiny_clip
from filters.clip_embed import decode_image

_clip: dict = {}


def _load_model(threads: int | None) -> None:
    """The model, its transform, tokenizer and input size, once per process."""
    if threads is not None:
        torch.set_num_threads(threads)
    register_tiny_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=str(TINY_CLIP_WEIGHTS), image_resize_mode=TINY_CLIP_RESIZE_MODE
    )
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    _clip.update(
        model=model.eval(),
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(TINY_CLIP_NAME),
        size=max(size) if isinstance(size, (tuple, list)) else int(size),
    )


def _score(images: list, texts: list[str]) -> int:
    model, preprocess, tokenizer = _clip["model"], _clip["preprocess"], _clip["tokenizer"]
    with torch.inference_mode():
        img = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
        txt = model.encode_text(tokenizer(texts), normalize=True)
        return len((img * txt).sum(-1))


def _score_shard(_: int, tar: str, batch_size: int) -> tuple[int, int, int]:
    """(scored, failed to decode, torch threads) of one shard."""
    scored = failed = 0
    images, texts = [], []
    for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
        try:
            images.append(decode_image(sample.get("jpg"), _clip["size"]))
        except Exception:  # noqa: BLE001 - PIL raises many types for bad data; the step fails these rows
            failed += 1
            continue
        texts.append(sample["txt"].decode("utf-8", errors="replace"))
        if len(images) == batch_size:
            scored += _score(images, texts)
            images, texts = [], []
    if images:
        scored += _score(images, texts)
    return scored, failed, torch.get_num_threads()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    threads = None if args.processes == 1 else max(1, (os.cpu_count() or 1) // args.processes)
    counts = map_shards(
        partial(_score_shard, batch_size=args.batch_size), args.input, args.processes, _load_model, (threads,)
    )
    print(
        json.dumps(
            {
                "scored": sum(c[0] for c in counts),
                "failed": sum(c[1] for c in counts),
                "torch_threads": max(c[2] for c in counts),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
