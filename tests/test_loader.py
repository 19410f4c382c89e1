"""BucketedLoader and SampleLoader on small hand-written shards: curriculum, splitting, determinism."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from curate.loader import BucketedLoader, SampleLoader
from curate.pack.manifest import build_manifest, write_manifest

TOKENS_PER_BATCH = 64  # batch sizes 8, 4, 2, 1 for k = 3, 4, 5, 6
# Shard sizes per bucket: multiples of the batch size, so every slot split divides into full batches.
EVEN = {3: [48] * 4, 4: [24] * 4, 5: [12] * 4, 6: [6] * 4}  # 24 batches per bucket, 360 chunks
UNEVEN = {3: [48, 40, 24], 4: [20, 12, 16, 4], 5: [7, 12], 6: [5, 1, 3]}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_dataset(root: Path, layout: dict[int, list[int]], *, curriculum: str = "grow_p2", shift: int = 1) -> str:
    """Bucket shards in the writer's format; token 0 of each chunk is its global id, to check collation."""
    root.mkdir(parents=True, exist_ok=True)
    buckets, chunk_id = {}, 0
    for k, sizes in layout.items():
        (root / f"D_{k}").mkdir()
        shards = []
        for s, n in enumerate(sizes):
            rel = f"D_{k}/{s:08d}.tar"
            with wds.TarWriter(str(root / rel)) as sink:
                for i in range(n):
                    tokens = np.arange(chunk_id, chunk_id + 2**k + shift, dtype=np.int32)
                    meta = {"uid": f"doc{chunk_id}", "chunk_index": k, "offset": 7 * k, "k": k, "num_tokens": 999}
                    sink.write({"__key__": f"{k:02d}{s:08d}{i:06d}", "tokens.npy": _npy(tokens), "json": meta})
                    chunk_id += 1
            shards.append({"path": rel, "sequences": n})
        buckets[k] = {"sequences": sum(sizes), "shards": shards}
    manifest = build_manifest(
        buckets,
        tokens_per_batch=TOKENS_PER_BATCH,
        min_k=3,
        max_k=6,
        shift_target=bool(shift),
        tokenizer="test",
        curriculum=curriculum,
    )
    write_manifest(root / "manifest.json", manifest)
    return str(root / "manifest.json")


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> str:
    return write_dataset(tmp_path_factory.mktemp("even"), EVEN)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> str:
    return write_dataset(tmp_path_factory.mktemp("uneven"), UNEVEN)


def _ids(batch: dict) -> list[int]:
    return [int(u[3:]) for u in batch["uid"]]


def _run(loader) -> list[tuple[int, tuple[int, ...]]]:
    return [(b["k"], tuple(_ids(b))) for b in loader]


def test_batches_have_constant_tokens_and_cover_the_epoch(even):
    loader = BucketedLoader(even, seed=3)
    manifest = loader.manifest
    seen: Counter[int] = Counter()
    ids: list[int] = []
    for batch in loader:
        k = batch["k"]
        b = loader.buckets[k]
        assert batch["tokens"].dtype == torch.long
        assert tuple(batch["tokens"].shape) == (b["batch_size"], b["stored_len"])
        assert b["stored_len"] == b["seq_len"] + 1
        assert b["batch_size"] * b["seq_len"] == TOKENS_PER_BATCH
        # Rows and metadata stay aligned: token 0 is the chunk id written into the uid.
        assert batch["tokens"][:, 0].tolist() == _ids(batch)
        assert batch["chunk_index"].tolist() == [k] * b["batch_size"]
        assert batch["offset"].tolist() == [7 * k] * b["batch_size"]
        seen[k] += 1
        ids += _ids(batch)
    assert seen == {b["k"]: b["batches"] for b in manifest["buckets"]}
    assert sorted(ids) == list(range(manifest["sequences"]))
    assert loader.num_batches() == manifest["batches"]


def _step_stats(loader: BucketedLoader, seeds: range) -> tuple[dict[int, float], Counter[int]]:
    """Mean relative step of each bucket and the bucket counts of the first 10% of steps, over seeds."""
    position: dict[int, list[float]] = {}
    early: Counter[int] = Counter()
    for seed in seeds:
        loader.seed = seed
        steps = loader.schedule()
        for i, k in enumerate(steps):
            position.setdefault(k, []).append(i / len(steps))
        early.update(steps[: len(steps) // 10])
    return {k: float(np.mean(v)) for k, v in position.items()}, early


def test_grow_p2_puts_short_buckets_first(even, tmp_path):
    loader = BucketedLoader(even, seed=0)
    # The iteration follows the schedule.
    assert [k for k, _ in _run(loader)] == loader.schedule()
    means, early = _step_stats(loader, range(20))
    assert means[3] < means[4] < means[5] < means[6]
    assert means[6] - means[3] > 0.3
    # Odds 8:4:2:1 with equal batch counts: k=3 starts at 8/15 of the steps.
    assert early[3] > 0.45 * sum(early.values())
    assert early.most_common(1)[0][0] == 3
    uniform = BucketedLoader(write_dataset(tmp_path / "u", EVEN, curriculum="uniform"))
    means_u, _ = _step_stats(uniform, range(20))
    assert abs(means_u[6] - means_u[3]) < 0.1


def test_two_ranks_disjoint_and_in_lock_step(uneven):
    ranks = [_run(BucketedLoader(uneven, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert [k for k, _ in ranks[0]] == [k for k, _ in ranks[1]], "ranks must pick the same bucket each step"
    ids = [{i for _, batch in run for i in batch} for run in ranks]
    assert not ids[0] & ids[1]
    # Per rank: min over ranks of the full batches of its shards (shards dealt round-robin).
    # k=3 bs 8: (48+24)//8=9 vs 40//8=5; k=4 bs 4: (20+16)//4=9 vs (12+4)//4=4;
    # k=5 bs 2: 7//2=3 vs 12//2=6; k=6 bs 1: 5+3=8 vs 1.
    expected = {3: 5, 4: 4, 5: 3, 6: 1}
    assert Counter(k for k, _ in ranks[0]) == expected
    assert BucketedLoader(uneven, rank=1, world_size=2).batch_counts() == expected


def test_drop_last_false_covers_every_chunk_once(uneven):
    runs = [_run(BucketedLoader(uneven, rank=r, world_size=2, drop_last=False)) for r in range(2)]
    ids = [i for run in runs for _, batch in run for i in batch]
    assert sorted(ids) == list(range(sum(map(sum, UNEVEN.values()))))


def test_same_seed_same_order_new_epoch_new_order(even):
    a, b = BucketedLoader(even, seed=1, epoch=4), BucketedLoader(even, seed=1, epoch=4)
    first = _run(a)
    assert first == _run(b)
    assert first == _run(a), "re-iterating the same epoch repeats it"
    a.set_epoch(5)
    second = _run(a)
    assert second != first
    assert [k for k, _ in second] != [k for k, _ in first]
    assert sorted(i for _, batch in second for i in batch) == sorted(i for _, batch in first for i in batch)
    assert _run(BucketedLoader(even, seed=2, epoch=4)) != first


def test_dataloader_workers_split_without_duplicates(even):
    single = {i for _, batch in _run(BucketedLoader(even, seed=7)) for i in batch}
    loader = BucketedLoader(even, seed=7)
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=2)
    ids, steps = [], Counter()
    for batch in dl:
        ids += _ids(batch)
        steps[batch["k"]] += 1
    assert len(ids) == len(set(ids))
    assert set(ids) == single
    assert sum(steps.values()) == loader.num_batches(num_workers=2)


def test_fewer_shards_than_slots_warns(even, caplog):
    loader = BucketedLoader(even, rank=0, world_size=8)
    with caplog.at_level(logging.WARNING, logger="curate.loader"):
        batches = _run(loader)
    assert "has 4 shards for 8" in caplog.text
    # Ranks 4..7 hold no shard of any bucket, and lock step holds every rank to the smallest share.
    assert batches == [] and loader.batch_counts() == {3: 0, 4: 0, 5: 0, 6: 0}


def test_wrong_stored_length_is_reported(tmp_path):
    path = write_dataset(tmp_path / "bad", {3: [8]}, shift=0)
    manifest = json.loads(Path(path).read_text())
    manifest["shift_target"] = True
    manifest["buckets"][0]["stored_len"] = 9
    Path(path).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="expects"):
        next(iter(BucketedLoader(path)))


def _plain_shards(root: Path, shards: int = 5, per_shard: int = 6) -> set[str]:
    root.mkdir()
    keys, sizes = set(), {}
    for s in range(shards):
        with wds.TarWriter(str(root / f"{s:08d}.tar")) as sink:
            for i in range(per_shard):
                key = f"{s:08d}{i:06d}"
                buf = io.BytesIO()
                Image.new("RGB", (8, 6), (s * 40, i * 30, 0)).save(buf, format="JPEG")
                sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": f"caption {key}", "json": {"key": key}})
                keys.add(key)
        sizes[f"{s:08d}.tar"] = per_shard
    (root / "sizes.json").write_text(json.dumps(sizes))
    return keys


def test_sample_loader_splits_ranks_disjointly(tmp_path):
    keys = _plain_shards(tmp_path / "shards")
    runs = [list(SampleLoader(str(tmp_path / "shards"), seed=1, rank=r, world_size=2)) for r in range(2)]
    got = [{s["__key__"] for s in run} for run in runs]
    assert not got[0] & got[1]
    assert got[0] | got[1] == keys
    sample = runs[0][0]
    assert isinstance(sample["image"], Image.Image) and sample["image"].size == (8, 6)
    assert sample["text"] == f"caption {sample['__key__']}"
    assert sample["json"] == {"key": sample["__key__"]}
    raw = next(iter(SampleLoader(str(tmp_path / "shards"), decode_image=False)))
    assert isinstance(raw["image"], bytes)
    # The shard order is reshuffled per epoch and fixed for a given (seed, epoch).
    loader = SampleLoader(str(tmp_path / "shards"), seed=1)
    orders = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        orders.append([s["__key__"][:8] for s in loader][::6])
    loader.set_epoch(0)
    assert [s["__key__"][:8] for s in loader][::6] == orders[0]
    assert len({tuple(o) for o in orders}) > 1
