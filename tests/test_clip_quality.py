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


def test_export_npz_is_row_aligned_and_reads_back_as_datacomp(swapped_run, tmp_path, ray_session):
    import numpy as np
    import pyarrow.parquet as pq

    from curate.cli import main
    from curate.readers.base import list_shards, read_shard

    _, result = swapped_run
    out = tmp_path / "export"
    assert (
        main(
            [
                "export-npz",
                str(result.run_dir.root),
                str(out),
                "--rename",
                "clip_image_emb=l14_img",
                "--rename",
                "clip_score=clip_l14_similarity_score",
            ]
        )
        == 0
    )
    meta = pq.read_table(out / "00000000.parquet")
    arrays = np.load(out / "00000000.npz")
    assert arrays["l14_img"].shape == (meta.num_rows, 128)
    sidecar = pq.read_table(result.run_dir.shards / "00000000.parquet", columns=["uid", "clip_image_emb"])
    assert meta["uid"].to_pylist() == sidecar["uid"].to_pylist()
    first = next(i for i, v in enumerate(sidecar["clip_image_emb"].to_pylist()) if v is not None)
    np.testing.assert_allclose(arrays["l14_img"][first], sidecar["clip_image_emb"][first].as_py(), rtol=1e-3)
    (ref,) = list_shards(str(out / "00000000.parquet"))
    assert ref.format == "datacomp" and "l14_img" in read_shard(ref).column_names


def test_image_based_references_from_prompts_use_the_clip_text_tower():
    import numpy as np

    from filters.image_based import ImageBasedFilter, ImageBasedParams

    step = ImageBasedFilter(
        ImageBasedParams(
            reference_prompts=["a red circle", "a blue square"], clip_model="curate-tiny-clip", clip_pretrained="curate"
        )
    )
    refs = step._references()
    assert refs.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(refs, axis=1), 1.0, rtol=1e-2)
    # They are the text tower's own output for those prompts, computed here with open_clip directly,
    # and the tower gives other prompts other vectors (not a constant or a cached pair).
    import open_clip
    import torch

    from curate.models import TINY_CLIP_NAME, TINY_CLIP_WEIGHTS, register_tiny_clip

    register_tiny_clip()
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(TINY_CLIP_WEIGHTS)).eval()
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    with torch.inference_mode():
        tower = model.encode_text(tokenizer(["a red circle", "a blue square", "a green star"]), normalize=True)
    tower = tower.numpy()
    np.testing.assert_allclose(refs, tower[:2], atol=2e-3)
    assert float(refs[0] @ refs[1]) < 0.99 and float(tower[2] @ refs[0]) < 0.99 and float(tower[2] @ refs[1]) < 0.99
