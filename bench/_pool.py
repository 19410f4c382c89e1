"""The pool as the bare baselines read it: webdataset over the shards, each image decoded once by PIL."""

from __future__ import annotations

import io
from collections.abc import Iterator

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
