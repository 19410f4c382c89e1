"""DataComp interop: filters on DataComp-format metadata give exactly the uids of DataComp's rules
(re-implemented here the straightforward way), the subset file is DataComp's, and reshard follows it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from curate.config import validate_recipe
from curate.readers.base import InputError
from curate.runner import run_recipe
from curate.subset import read_subset, subset_report, subset_to_uids, write_subset
from filters.basic import detect_language

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from datacomp_meta import make_datacomp_metadata  # noqa: E402

FRACTION = 0.3


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    out = tmp_path_factory.mktemp("datacomp_meta")
    make_datacomp_metadata(str(out), shards=3, rows_per_shard=400, seed=3, dims={"l14_img": 32, "b32_img": 16})
    refs = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    np.save(out / "refs.npy", refs)
    return out


@pytest.fixture(scope="module")
def datacomp_run(ray_session, metadata, tmp_path_factory):
    out = tmp_path_factory.mktemp("datacomp_run")
    recipe = validate_recipe(
        {
            "name": "basic_clip_image",
            "input": {"path": f"{metadata}/*.parquet", "format": "datacomp"},
            "output": {"path": str(out), "layout": "metadata"},
            "steps": [
                {"name": "basic", "resources": {"num_cpus": 0.5}},
                {
                    "name": "clip_fraction",
                    "params": {"score_column": "clip_l14_similarity_score", "fraction": FRACTION},
                },
                {
                    "name": "image_based",
                    "params": {
                        "embedding_column": "l14_img",
                        "num_clusters": 12,
                        "reference_embeddings": str(metadata / "refs.npy"),
                    },
                },
            ],
        }
    )
    return run_recipe(recipe)


def _expected_uids(metadata: Path, centroids: np.ndarray) -> set[str]:
    """DataComp's rules, row by row, on the raw parquet + npz."""
    frames = []
    for path in sorted(metadata.glob("*.parquet")):
        df = pd.read_parquet(path)
        df["l14_img"] = list(np.load(path.with_suffix(".npz"))["l14_img"].astype(np.float32))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    langs = [lang for lang, _ in detect_language(list(df.text.fillna("")), "lite")]
    basic = [
        lang == "en" and len(t.split()) > 2 and len(t) > 5 and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3
        for lang, t, w, h in zip(langs, df.text.fillna(""), df.original_width, df.original_height, strict=True)
    ]
    scores = df.clip_l14_similarity_score.to_numpy()
    threshold = -np.sort(-scores)[int(len(df) * FRACTION)]
    emb = np.stack(df.l14_img.to_numpy())
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    refs = np.load(metadata / "refs.npy")
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    targets = set(np.argmax(refs @ centroids.T, axis=1).tolist())
    clusters = np.argmax(emb @ centroids.T, axis=1)
    caption_ok = [
        lang == "en" and len(t.split()) > 1 and len(t) > 5 for lang, t in zip(langs, df.text.fillna(""), strict=True)
    ]
    keep = [
        b and s >= threshold and c in targets and ok
        for b, s, c, ok in zip(basic, scores, clusters, caption_ok, strict=True)
    ]
    return set(df.uid[keep])


def test_filters_give_exactly_datacomp_rules(datacomp_run, metadata):
    root = datacomp_run.run_dir.root
    state = json.loads((root / "global_state.json").read_text())
    centroids = np.load(state["image_based"]["centroids"])
    expected = _expected_uids(metadata, centroids)
    got = set(subset_to_uids(read_subset(root / "subset.npy")))
    assert 0 < len(got) < 1200
    assert got == expected


def test_subset_file_is_datacomps_format(datacomp_run):
    arr = read_subset(datacomp_run.run_dir.root / "subset.npy")
    assert arr.dtype == np.dtype("u8,u8") and np.array_equal(np.sort(arr), arr)
    assert datacomp_run.stats["subset"]["uids"] == len(arr) == datacomp_run.stats["written"]


def test_bad_datacomp_inputs_fail_before_work(metadata, tmp_path):
    from curate.config import RecipeError

    with pytest.raises(RecipeError, match="layout"):
        validate_recipe({"input": {"format": "datacomp"}, "steps": [{"name": "basic"}]})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000000.parquet").write_bytes((metadata / "00000000.parquet").read_bytes())
    np.savez(bad / "00000000.npz", l14_img=np.zeros((3, 32), np.float16))  # misaligned rows
    recipe = validate_recipe(
        {
            "input": {"path": f"{bad}/*.parquet", "format": "datacomp"},
            "output": {"path": str(tmp_path / "run"), "layout": "metadata"},
            "steps": [{"name": "basic"}],
        }
    )
    with pytest.raises(InputError, match="row-aligned"):
        run_recipe(recipe)
    missing = validate_recipe(
        {
            "input": {"path": f"{metadata}/*.parquet", "format": "datacomp"},
            "output": {"path": str(tmp_path / "run2"), "layout": "metadata"},
            "steps": [{"name": "clip_fraction", "params": {"score_column": "clip_h14_score", "fraction": 0.3}}],
        }
    )
    with pytest.raises(InputError, match=r"steps\.0\.params\.score_column: value 'clip_h14_score'"):
        run_recipe(missing)
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run folder was set up


def test_reshard_follows_a_subset_with_duplicates_and_missing(basic_run, small_pool_pattern, tmp_path):
    kept = subset_to_uids(read_subset(basic_run.run_dir.root / "subset.npy"))
    chosen = kept[:50] + kept[:5] + [f"{i:032x}" for i in range(3)]  # 5 duplicates, 3 not in the pool
    write_subset(tmp_path / "s.npy", chosen)
    recipe = validate_recipe(
        {
            "input": {"path": small_pool_pattern},
            "output": {"path": str(tmp_path / "run")},
            "steps": [{"name": "subset", "params": {"path": str(tmp_path / "s.npy")}}],
        }
    )
    result = run_recipe(recipe)
    sizes = json.loads((tmp_path / "run" / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 55
    uids = []
    for name in sizes:
        for sample in wds.WebDataset(str(tmp_path / "run" / "shards" / name), shardshuffle=False):
            uids.append(json.loads(sample["json"])["uid"])
    assert sorted(uids) == sorted(kept[:50] + kept[:5])
    report = subset_report(tmp_path / "run", tmp_path / "s.npy")
    assert report["missing_uids"] == 3 and report["duplicates"] == 5
    assert result.stats["written"] == 50
