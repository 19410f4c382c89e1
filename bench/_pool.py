"""The pool as the bare baselines read it: webdataset over the shards, each image decoded once by PIL,
and ``map_shards``, the per-shard process pool of the parallel baselines."""

from __future__ import annotations

import io
import multiprocessing as mp
from collections.abc import Callable, Iterator
from typing import Any

import braceexpand
import webdataset as wds
from PIL import Image


def decoded_samples(pattern: str) -> Iterator[tuple[dict, Image.Image | None]]:
    """(webdataset sample, RGB image or None when it has no decodable jpg) for every sample, in order."""
    for tar in braceexpand.braceexpand(pattern):
        for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
            try:
                yield sample, Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            except Exception:  # noqa: BLE001 - the steps fail these rows; the baselines count them
                yield sample, None


def map_shards(
    work: Callable[[int, str], Any],
    pattern: str,
    processes: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> list:
    """``work(index, tar)`` for every shard of ``pattern``, in shard order, on ``processes`` worker
    processes (1: in this process, no pool). ``initializer(*initargs)`` runs once per process first."""
    shards = list(enumerate(braceexpand.braceexpand(pattern)))
    if processes == 1:
        if initializer is not None:
            initializer(*initargs)
        return [work(i, tar) for i, tar in shards]
    with mp.Pool(processes, initializer, initargs) as pool:
        # chunksize 1: shards are few and large, so each process takes the next one when it is free.
        return pool.starmap(work, shards, chunksize=1)
