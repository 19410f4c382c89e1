"""PyTorch loaders for curate outputs, on webdataset tar shards.

``BucketedLoader`` reads a dataset-decomposition manifest (``curate.pack.manifest``) and yields whole
batches, one bucket per step, each with ``tokens_per_batch`` prediction positions:

* Sharding. Each bucket's shard list is dealt round-robin over ``world_size * num_workers`` slots
  (slot = ``rank * num_workers + worker_id``), so ranks and workers never share a shard. A bucket
  with fewer shards than slots leaves some slots without that bucket (a warning is logged); those
  slots, and by the lock-step rule below every rank's same worker, then get no batch of it.
* Shuffling. Within a slot, a bucket's shard order and samples are shuffled with a seed from
  ``(seed, epoch, k, slot)``; samples go through a buffer of ``shuffle_tokens`` tokens (a full
  shuffle when it holds the slot's whole bucket, else shard order plus a local shuffle).
* Curriculum. Each step picks bucket ``k`` with probability ``odds_k * remaining_batches_k``
  (``grow_p2``: odds favour short buckets, so they dominate early and long ones late; ``uniform``:
  odds 1). The RNG is seeded from ``(seed, epoch, worker_id)``, never the rank.
* Lock step (``drop_last=True``). Each worker plays ``min over ranks`` of its slots' full-batch counts
  per bucket, computed from the manifest alone, so every rank makes the same bucket choice at the
  same step (same tokens per step on all ranks, no collective stalls); surplus samples are dropped.
  With ``drop_last=False`` a slot plays all its samples (the last batch of a bucket may be short)
  and ranks may diverge: meant for single-process evaluation or exact coverage.

Set the epoch with ``set_epoch`` before each ``iter()``; with ``persistent_workers=True`` the
workers keep the copy they were started with.

``SampleLoader`` reads the plain run output (``NNNNNNNN.tar`` of jpg/txt/json) with the same
shard split and a per-epoch shuffled shard order.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from curate.pack.manifest import read_manifest

logger = logging.getLogger(__name__)

# Distinct first words keep the schedule, sample and shard-order RNG streams independent.
_TAG_SCHEDULE, _TAG_SAMPLES, _TAG_SHARDS = 11, 23, 37


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _shuffled(samples: Iterator[dict], buffer: int, rng: np.random.Generator) -> Iterator[dict]:
    """Seeded shuffle buffer: a uniform permutation when ``buffer`` holds the whole stream."""
    pool: list[dict] = []
    for sample in samples:
        if len(pool) < buffer:
            pool.append(sample)
            continue
        j = int(rng.integers(len(pool)))
        pool[j], sample = sample, pool[j]
        yield sample
    for j in rng.permutation(len(pool)):
        yield pool[j]


def curriculum_schedule(counts: dict[int, int], odds: dict[int, float], rng: np.random.Generator) -> list[int]:
    """Bucket per step: ``k`` with probability ``odds_k * remaining_k``; consumes every count exactly."""
    remaining = {k: c for k, c in counts.items() if c > 0 and odds.get(k, 0) > 0}
    ks = sorted(remaining)
    steps: list[int] = []
    while ks:
        cum = np.cumsum([odds[k] * remaining[k] for k in ks])
        i = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(ks) - 1)
        k = ks[i]
        steps.append(k)
        remaining[k] -= 1
        if remaining[k] == 0:
            ks.pop(i)
    return steps


class BucketedLoader(IterableDataset):
    """Batches of one bucket per step following the manifest's curriculum (see module docstring)."""

    def __init__(
        self,
        manifest_path: str,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
        shuffle_tokens: int = 1 << 21,
    ):
        super().__init__()
        self.manifest_path = str(manifest_path)
        self.root = Path(self.manifest_path).resolve().parent
        self.manifest = read_manifest(self.manifest_path)
        self.buckets = {int(b["k"]): b for b in self.manifest["buckets"]}
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = rank, world_size  # resolved at iteration: dist may start later
        self.drop_last = drop_last
        # The shuffle buffer is sized in tokens, not samples, so long buckets do not blow up memory.
        self.shuffle_tokens = int(shuffle_tokens)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _slot_sequences(self, k: int, slot: int, slots: int) -> int:
        return sum(int(s["sequences"]) for s in self.buckets[k]["shards"][slot::slots])

    def batch_counts(self, worker_id: int = 0, num_workers: int = 1) -> dict[int, int]:
        """Batches per bucket that worker ``worker_id`` of this rank yields in an epoch."""
        rank, world = _dist_rank_world(self.rank, self.world_size)
        slots = world * num_workers
        counts = {}
        for k, b in self.buckets.items():
            bs = int(b["batch_size"])
            if self.drop_last:
                counts[k] = min(self._slot_sequences(k, r * num_workers + worker_id, slots) // bs for r in range(world))
            else:
                counts[k] = -(-self._slot_sequences(k, rank * num_workers + worker_id, slots) // bs)
        return counts

    def num_batches(self, num_workers: int = 1) -> int:
        """Batches this rank yields in an epoch (over all its DataLoader workers)."""
        return sum(sum(self.batch_counts(w, num_workers).values()) for w in range(num_workers))

    def schedule(self, worker_id: int = 0, num_workers: int = 1) -> list[int]:
        """The bucket ``k`` of each batch of worker ``worker_id`` this epoch, in order (no I/O)."""
        odds = {k: float(b["odds"]) for k, b in self.buckets.items()}
        rng = np.random.default_rng([_TAG_SCHEDULE, self.seed, self.epoch, worker_id])
        return curriculum_schedule(self.batch_counts(worker_id, num_workers), odds, rng)

    def _bucket_stream(self, k: int, slot: int, slots: int) -> Iterator[dict]:
        shards = self.buckets[k]["shards"][slot::slots]
        rng = np.random.default_rng([_TAG_SAMPLES, self.seed, self.epoch, k, slot])
        urls = [{"url": str(self.root / shards[i]["path"])} for i in rng.permutation(len(shards))]
        buffer = max(self.shuffle_tokens // int(self.buckets[k]["stored_len"]), int(self.buckets[k]["batch_size"]), 1)
        return _shuffled(iter(wds.tariterators.tarfile_samples(urls)), buffer, rng)

    def _collate(self, k: int, samples: list[dict]) -> dict[str, Any]:
        stored_len = int(self.buckets[k]["stored_len"])
        rows, metas = [], []
        for s in samples:
            tokens = np.load(io.BytesIO(s["tokens.npy"]), allow_pickle=False)
            meta = json.loads(s["json"])
            if tokens.shape != (stored_len,) or int(meta["k"]) != k:
                raise ValueError(
                    f"{s.get('__url__')}: sample {s['__key__']} has shape {tokens.shape} and k={meta.get('k')}, "
                    f"bucket k={k} expects ({stored_len},)"
                )
            rows.append(tokens)
            metas.append(meta)
        return {
            "k": k,
            "tokens": torch.from_numpy(np.stack(rows).astype(np.int64)),
            "uid": [str(m["uid"]) for m in metas],
            "chunk_index": torch.tensor([int(m["chunk_index"]) for m in metas], dtype=torch.long),
            "offset": torch.tensor([int(m["offset"]) for m in metas], dtype=torch.long),
        }

    def __iter__(self) -> Iterator[dict]:
        rank, world = _dist_rank_world(self.rank, self.world_size)
        worker_id, num_workers = _worker()
        slots = world * num_workers
        slot = rank * num_workers + worker_id
        if slot == 0:
            for k, b in sorted(self.buckets.items()):
                if 0 < len(b["shards"]) < slots:
                    logger.warning(
                        "bucket k=%d has %d shards for %d rank*worker slots: slots without a shard skip it",
                        k,
                        len(b["shards"]),
                        slots,
                    )
        streams: dict[int, Iterator[dict]] = {}
        for k in self.schedule(worker_id, num_workers):
            stream = streams.get(k)
            if stream is None:
                stream = streams[k] = self._bucket_stream(k, slot, slots)
            batch = list(itertools.islice(stream, int(self.buckets[k]["batch_size"])))
            if not batch or (self.drop_last and len(batch) < int(self.buckets[k]["batch_size"])):
                raise RuntimeError(
                    f"bucket k={k}: shards of slot {slot} hold fewer samples than {self.manifest_path} says"
                )
            yield self._collate(k, batch)


class SampleLoader(IterableDataset):
    """Samples of a plain run output folder (``NNNNNNNN.tar`` + ``sizes.json``), split over ranks and workers."""

    def __init__(
        self,
        shards_dir: str,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        decode_image: bool = True,
        shuffle: bool = True,
    ):
        super().__init__()
        self.shards_dir = Path(shards_dir)
        self.shards = self._list_shards()
        self.seed, self.epoch = int(seed), int(epoch)
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        # Without decoding, the image stays as the jpg bytes (cheap when the trainer decodes on GPU).
        self.decoder = wds.autodecode.Decoder([wds.autodecode.imagehandler("pil")] if decode_image else [])

    def _list_shards(self) -> list[str]:
        sizes_path = self.shards_dir / "sizes.json"
        names = sorted(p.name for p in self.shards_dir.glob("*.tar"))
        if sizes_path.exists():
            sizes = json.loads(sizes_path.read_text())
            # Empty shards would only make some slots idle.
            names = [n for n in names if sizes.get(n, 1) > 0]
        if not names:
            raise FileNotFoundError(f"no .tar shards in {self.shards_dir}")
        return [os.fspath(self.shards_dir / n) for n in names]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict]:
        rank, world = _dist_rank_world(self.rank, self.world_size)
        worker_id, num_workers = _worker()
        slots, slot = world * num_workers, rank * num_workers + worker_id
        shards = list(self.shards)
        if self.shuffle:
            # Seeded from (seed, epoch) only: every rank must permute alike for the split to stay disjoint.
            rng = np.random.default_rng([_TAG_SHARDS, self.seed, self.epoch])
            shards = [shards[i] for i in rng.permutation(len(shards))]
        if slot == 0 and len(shards) < slots:
            logger.warning("%d shards for %d rank*worker slots: some slots get no data", len(shards), slots)
        for sample in wds.tariterators.tarfile_samples([{"url": u} for u in shards[slot::slots]]):
            decoded = self.decoder(sample)
            yield {
                "__key__": decoded["__key__"],
                "image": decoded.get("jpg"),
                "text": decoded.get("txt"),
                "json": decoded.get("json"),
            }
