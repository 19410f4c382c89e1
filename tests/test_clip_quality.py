"""Acceptance of CLIP-score filtering through a real run: on a fresh pool with 20% of captions
swapped, the clip_filter recipe's global top-80% keeps removes >= 90% of the swapped pairs and
<= 5% of the clean ones (the tiny CLIP never saw this pool: it was trained on seed 1234)."""

from __future__ import annotations

import pytest

from curate.catalog import connect
from curate.config import load_recipe
from curate.runner import run_recipe
from curate.synth import FaultRates, load_ground_truth, make_pool


@pytest.fixture(scope="module")
def swapped_run(ray_session, tmp_path_factory):
    pool = tmp_path_factory.mktemp("swapped_pool")
    make_pool(
        str(pool),
        samples=1500,
        shard_size=500,
        seed=13,
        faults=FaultRates(**{**FaultRates.none().as_dict(), "swapped_caption": 0.2}),
        workers=2,
    )
    out = tmp_path_factory.mktemp("clip_run")
    recipe = load_recipe("clip_filter", input_path=f"{pool}/{{00000000..00000002}}.tar", output_path=str(out))
    return pool, run_recipe(recipe)


def test_clip_fraction_removes_swapped_captions(swapped_run):
    pool, result = swapped_run
    fault = {r["uid"]: r["fault"] for r in load_ground_truth(str(pool)).to_pylist()}
    with connect(result.run_dir.root) as con:
        rows = con.execute(
            "select uid, d.keep from samples, unnest(decisions) as u(d) where d.step = 'clip_fraction'"
        ).fetchall()
    swapped = [keep for uid, keep in rows if fault[uid] == "swapped_caption"]
    clean = [keep for uid, keep in rows if fault[uid] == "none"]
    assert len(swapped) > 200 and len(clean) > 1000
    assert 1 - sum(swapped) / len(swapped) >= 0.90
    assert 1 - sum(clean) / len(clean) <= 0.05


def test_embeddings_stay_in_the_sidecar_not_the_sample_json(swapped_run):
    import json

    import webdataset as wds

    _, result = swapped_run
    sample = next(iter(wds.WebDataset(str(result.run_dir.shards / "00000000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    assert "clip_score" in meta and "clip_image_emb" not in meta
    with connect(result.run_dir.root) as con:
        (dim,) = con.execute(
            "select len(clip_image_emb) from samples where clip_image_emb is not null limit 1"
        ).fetchall()[0]
    assert dim == 128
