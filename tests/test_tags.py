"""The tags step: zero-shot CLIP tags from a vocabulary, reusing clip_embed's image embeddings."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
from conftest import pool_pattern
from run_helpers import run_in_process

import captioners.tags  # noqa: F401 - registers the step before curate.registry lists it
from captioners.tags import read_vocabulary
from curate.models import TINY_CLIP_NAME
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import COLORS, SHAPES, FaultRates, make_pool
from schemas.tables import STATUS_FAILED_DECODE, rows_to_sample_table

VOCAB = [*SHAPES, *COLORS]
TEMPLATE = "a photo of a {}"
# Measured on this pool (seed 13, 160 scenes) with every tag ranked: the best colour tag is the largest
# shape's colour for 0.75 of the scenes (chance 0.10), the best kind tag its kind for 0.21 (chance
# 0.125; the tiny CLIP sees 64 px, where small shapes' outlines are barely resolved, see its model card),
# and the primary's kind or colour is among the top 3 of 18 tags for 0.975 (chance about 0.31).
# CPU inference on a fixed pool is deterministic; the bars leave room for numeric drift across versions.
COLOUR_BAR, KIND_BAR, TOP3_BAR = 0.55, 0.15, 0.85
TINY = {"model": TINY_CLIP_NAME, "device": "cpu", "vocabulary": VOCAB, "template": TEMPLATE}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """An unseen pool (the tiny CLIP was trained on seed 1234): 160 clean scenes."""
    folder = tmp_path_factory.mktemp("tags_pool")
    make_pool(str(folder), samples=160, shard_size=80, seed=13, faults=FaultRates.none())
    return folder


@pytest.fixture(scope="module")
def shapes(pool) -> pa.Table:
    return pa.concat_tables([read_shard(ref) for ref in list_shards(str(pool))])


@pytest.fixture(scope="module")
def tagger() -> StepRunner:
    return StepRunner("tags", "tags", {**TINY, "top_k": len(VOCAB)}, rows="kept")


def _primary(meta: str) -> tuple[str, str]:
    """(kind, colour) of the scene's largest shape (its scene label)."""
    gt = json.loads(meta)["gt"]
    area = [(s["bbox"][2] - s["bbox"][0]) * (s["bbox"][3] - s["bbox"][1]) for s in gt["shapes"]]
    ranked = sorted(range(len(area)), key=lambda i: -area[i])
    s = gt["shapes"][next(i for i in ranked if gt["shapes"][i]["label"] == gt["scene_label"])]
    return s["label"], s["color"]


def test_top_tags_name_the_primary_shape(tagger, shapes):
    """The best-scored kind and the best-scored colour among all 18 tags, against the largest shape's
    (chance: 1/8 and 1/10), and whether the top 3 name either; see the bars above."""
    out = tagger(shapes)
    kind = colour = top3 = 0
    columns = (out["tags"].to_pylist(), out["tag_scores"].to_pylist(), shapes["meta"].to_pylist())
    for tags, scores, meta in zip(*columns, strict=True):
        assert sorted(tags) == sorted(VOCAB) and scores == sorted(scores, reverse=True)
        truth = _primary(meta)
        kind += next(t for t in tags if t in SHAPES) == truth[0]
        colour += next(t for t in tags if t in COLORS) == truth[1]
        top3 += bool(set(truth) & set(tags[:3]))
    n = shapes.num_rows
    assert top3 / n >= TOP3_BAR, top3 / n
    assert kind / n >= KIND_BAR, kind / n
    assert colour / n >= COLOUR_BAR, colour / n


def test_top_k_min_score_and_softmax(shapes):
    table = shapes.slice(0, 8)
    top3 = StepRunner("tags", "tags", {**TINY, "top_k": 3})(table)
    every = StepRunner("tags", "tags", {**TINY, "top_k": len(VOCAB)})(table)
    for short, full in zip(top3["tags"].to_pylist(), every["tags"].to_pylist(), strict=True):
        assert short == full[:3]
    floor = float(np.median(np.concatenate([np.asarray(s) for s in every["tag_scores"].to_pylist()])))
    cut = StepRunner("tags", "tags", {**TINY, "top_k": len(VOCAB), "min_score": floor})(table)
    for scores in cut["tag_scores"].to_pylist():
        assert all(s >= floor for s in scores)
    soft = StepRunner("tags", "tags", {**TINY, "top_k": len(VOCAB), "score": "softmax"})(table)
    assert soft["tags"].to_pylist() == every["tags"].to_pylist()
    np.testing.assert_allclose([sum(s) for s in soft["tag_scores"].to_pylist()], 1.0, atol=1e-4)


def test_reuses_clip_embed_embeddings(tagger, shapes):
    """With clip_image_emb in the batch (clip_embed ran before) the tags are those the step finds by
    embedding the images itself, up to float16 rounding; a row without an embedding is embedded."""
    table = shapes.slice(0, 12)
    embedded = StepRunner("clip_embed", "clip_embed", {"model": TINY_CLIP_NAME, "device": "cpu"}, rows="kept")(table)
    rows = embedded.to_pylist()
    rows[5]["image"] = b"garbage"  # has an embedding: the step never decodes it
    reused = tagger(pa.Table.from_pylist(rows, schema=embedded.schema))
    own = tagger(table)
    assert reused["status"].to_pylist() == ["success"] * 12
    for a, b in zip(reused["tag_scores"].to_pylist(), own["tag_scores"].to_pylist(), strict=True):
        np.testing.assert_allclose(a, b, atol=5e-3)
    assert [t[0] for t in reused["tags"].to_pylist()] == [t[0] for t in own["tags"].to_pylist()]
    other = embedded.set_column(
        embedded.schema.get_field_index("clip_image_emb"),
        "clip_image_emb",
        pa.array([None] * 12, embedded.schema.field("clip_image_emb").type),
    )
    again = tagger(other)  # all embeddings null: the step embeds every image itself
    np.testing.assert_allclose(
        np.concatenate(again["tag_scores"].to_pylist()), np.concatenate(own["tag_scores"].to_pylist()), atol=1e-5
    )
    wrong = pa.array([[0.1] * 64] * 12, pa.list_(pa.float16(), 64))
    with pytest.raises(ValueError, match="64 dimensions"):
        tagger.step(table.append_column("clip_image_emb", wrong))


def test_undecodable_images_fail_the_row_only(tagger, shapes):
    rows = shapes.slice(0, 3).to_pylist()
    rows[1]["image"] = b"this is not an image"
    out = tagger(rows_to_sample_table(rows))
    assert out["status"].to_pylist() == ["success", STATUS_FAILED_DECODE, "success"]
    assert out["tags"].null_count == 1 and out["tag_scores"].null_count == 1


def test_vocabulary_file_and_bad_params(tmp_path):
    vocab = tmp_path / "tags.txt"
    vocab.write_text("# shapes\ncircle\n\nsquare  # four sides\ncircle\n", encoding="utf-8")
    assert read_vocabulary(str(vocab)) == ["circle", "square"]
    out = StepRunner("tags", "tags", {**TINY, "vocabulary": str(vocab), "top_k": 5})
    assert out.step.vocabulary == ["circle", "square"]
    for params, message in [
        ({"vocabulary": str(tmp_path / "missing.txt")}, "does not exist"),
        ({"vocabulary": []}, "has no entries"),
        ({"template": "a photo"}, 'must contain "{}"'),
        ({"top_k": 0}, "top_k"),
        ({"model": "no-such-clip"}, "not an open_clip model"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            StepRunner("tags", "tags", {**TINY, **params})


def test_tags_after_clip_embed_in_a_run(ray_session, pool, tmp_path):
    """clip_embed then tags through the engine: tags reuse the stage's embeddings."""
    from curate.catalog import connect

    sets = [
        "steps=[]",
        "steps.0.name=clip_embed",
        f"steps.0.params.model={TINY_CLIP_NAME}",
        "steps.0.resources.num_cpus=0.5",
        "steps.1.name=tags",
        "steps.1.resources.num_cpus=0.5",
        f"steps.1.params.model={TINY_CLIP_NAME}",
        f"steps.1.params.vocabulary=[{','.join(VOCAB)}]",
        "steps.1.params.top_k=2",
        f"steps.1.params.template={TEMPLATE}",
    ]
    run = run_in_process("basic", pool_pattern(pool), tmp_path / "run", sets)
    with connect(run.run_dir.root) as con:
        rows = con.execute("SELECT tags, tag_scores FROM samples WHERE keep").fetchall()
    assert len(rows) == 160
    assert all(len(tags) == 2 and set(tags) <= set(VOCAB) for tags, _ in rows)
