"""The ocr step (RapidOCR PP-OCRv4 on onnxruntime): columns, failures, and reading the pool's signs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import pool_pattern
from PIL import Image, ImageDraw
from run_helpers import run_in_process

import captioners.ocr  # noqa: F401 - registers the step before curate.registry lists it
from captioners.ocr import BOX_TYPE, SCORE_TYPE, TEXT_TYPE, is_latin
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import FaultRates, load_ground_truth, make_pool
from curate.synth.scoring import box_iou
from curate.synth.text import font
from schemas.tables import STATUS_FAILED_DECODE, empty_sample_table, rows_to_sample_table

ONE_THREAD = {"threads": 1}
# Measured on the pool below (seed 21, 48 clean scenes, 38 with a sign, words of 3-8 letters at 16-61 px
# in three casings): 38/38 exact (case-sensitive), CER 0.000, the best box at IoU >= 0.64 with the word's
# ink box; on the 10 scenes without a sign, 1 Latin text read (4 with the Chinese glyphs the recogniser
# sees in some shapes). CPU inference is deterministic, so the bars only leave room for numeric drift.
EXACT_BAR, CER_BAR, SPURIOUS_BAR = 0.85, 0.05, 4


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _word_image(word: str, size=(320, 160), at=(40, 50), px=44) -> bytes:
    img = Image.new("RGB", size, (236, 232, 226))
    ImageDraw.Draw(img).text(at, word, font=font(px), fill=(24, 24, 30), anchor="la")
    return _jpeg(img)


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.fixture(scope="module")
def ocr() -> StepRunner:
    return StepRunner("ocr", "ocr", ONE_THREAD, rows="kept")


def test_reads_a_word_with_its_box(ocr):
    rows = [
        {"uid": f"{i:032x}", "shard_index": 0, "row_in_shard": i, "shard_rows": 4, "image": data}
        for i, data in enumerate(
            [_word_image("COFFEE"), _jpeg(Image.new("RGB", (200, 120), (128, 128, 128))), b"not an image", None]
        )
    ]
    rows[3]["status"] = "failed_to_download"
    out = ocr(rows_to_sample_table(rows))
    assert out.schema.field("ocr_texts").type == TEXT_TYPE
    assert out.schema.field("ocr_boxes").type == BOX_TYPE
    assert out.schema.field("ocr_scores").type == SCORE_TYPE
    assert out["ocr_texts"][0].as_py() == ["COFFEE"]
    (box,) = out["ocr_boxes"][0].as_py()
    ink = font(44).getbbox("COFFEE", anchor="la")
    truth = [(40 + ink[0]) / 320, (50 + ink[1]) / 160, (40 + ink[2]) / 320, (50 + ink[3]) / 160]
    assert box_iou(box, truth) > 0.6, (box, truth)
    assert 0.8 <= out["ocr_scores"][0].as_py()[0] <= 1.0
    assert out["ocr_texts"][1].as_py() == [] and out["ocr_boxes"][1].as_py() == []  # nothing to read
    assert out["status"].to_pylist() == ["success", "success", STATUS_FAILED_DECODE, "failed_to_download"]
    assert out["ocr_texts"].null_count == 2 and out["drop_reason"][2].as_py() == f"ocr:{STATUS_FAILED_DECODE}"


def test_empty_table_gets_typed_columns(ocr):
    out = ocr(empty_sample_table())
    assert out.num_rows == 0 and out.schema.field("ocr_boxes").type == BOX_TYPE


def test_latin_only_and_prefix():
    assert is_latin("Café 24h!") and is_latin("OPEN") and not is_latin("口") and not is_latin("...")
    img = Image.new("RGB", (420, 160), (236, 232, 226))
    draw = ImageDraw.Draw(img)
    draw.text((30, 50), "SALE", font=font(44), fill=(24, 24, 30), anchor="la")
    draw.rectangle((260, 40, 340, 120), outline=(24, 24, 30), width=10)  # a glyph-like square
    table = rows_to_sample_table(
        [{"uid": "0" * 32, "shard_index": 0, "row_in_shard": 0, "shard_rows": 1, "image": _jpeg(img)}]
    )
    every = StepRunner("ocr", "ocr", {**ONE_THREAD, "prefix": "text"}, rows="kept")(table)
    latin = StepRunner("ocr", "ocr", {**ONE_THREAD, "latin_only": True}, rows="kept")(table)
    assert "ocr_texts" not in every.column_names and "SALE" in every["text_texts"][0].as_py()
    assert latin["ocr_texts"][0].as_py() == [t for t in every["text_texts"][0].as_py() if is_latin(t)]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"min_score": 1.5}, "min_score"), ({"threads": 0}, "threads"), ({"language": "en"}, "language")],
)
def test_bad_params_fail_at_construction(params, field):
    with pytest.raises(ValueError, match=field):
        StepRunner("ocr", "ocr", params)


@pytest.fixture(scope="module")
def sign_pool(tmp_path_factory):
    """An unseen pool: 48 clean scenes, signs on about 3/4 of them."""
    folder = tmp_path_factory.mktemp("ocr_pool")
    make_pool(str(folder), samples=48, shard_size=24, seed=21, faults=FaultRates.none(), text_rate=0.75)
    return folder


@pytest.fixture(scope="module")
def ocr_run(ray_session, sign_pool, tmp_path_factory):
    """The step through the engine, once: every test below reads its catalog."""
    from curate.catalog import connect

    sets = ["steps=[]", "steps.0.name=ocr", "steps.0.params.threads=1", "steps.0.resources.batch_size=16"]
    run = run_in_process("basic", pool_pattern(sign_pool), tmp_path_factory.mktemp("ocr_run"), sets)
    with connect(run.run_dir.root) as con:
        cols = "uid, width, height, keep, ocr_texts, ocr_boxes, ocr_scores"
        return [
            dict(zip(cols.split(", "), r, strict=True)) for r in con.execute(f"SELECT {cols} FROM samples").fetchall()
        ]


def test_a_run_writes_what_the_step_computes(ocr, ocr_run, sign_pool):
    table = read_shard(list_shards(str(sign_pool))[0]).slice(0, 4)
    alone = {r["uid"]: r for r in ocr(table).select(["uid", "ocr_texts", "ocr_scores"]).to_pylist()}
    assert len(ocr_run) == 48 and all(r["keep"] for r in ocr_run)
    for row in ocr_run:
        if row["uid"] in alone:
            assert row["ocr_texts"] == alone[row["uid"]]["ocr_texts"]
            np.testing.assert_allclose(row["ocr_scores"], alone[row["uid"]]["ocr_scores"], atol=1e-6)


def test_reads_the_signs_of_an_unseen_pool(ocr_run, sign_pool):
    """Exact-match rate and character error rate of the text whose box overlaps the sign's word most
    (CER: Levenshtein distance / word length; no overlapping text counts as ""); see the bars above."""
    truth = {r["uid"]: r for r in load_ground_truth(str(sign_pool)).to_pylist()}
    exact, cers, spurious, plain = 0, [], 0, 0
    for row in ocr_run:
        gt = truth[row["uid"]]
        if gt["text_word"] is None:
            plain += 1
            spurious += sum(is_latin(t) for t in row["ocr_texts"])
            continue
        w, h = row["width"], row["height"]
        x0, y0, x1, y1 = gt["text_box"]
        box = [x0 / w, y0 / h, x1 / w, y1 / h]
        best, best_iou = "", 0.0
        for text, b in zip(row["ocr_texts"], row["ocr_boxes"], strict=True):
            if box_iou(box, b) > best_iou:
                best, best_iou = text, box_iou(box, b)
        exact += best == gt["text_word"]
        cers.append(levenshtein(best, gt["text_word"]) / len(gt["text_word"]))
    assert len(cers) >= 25 and plain >= 5
    assert exact / len(cers) >= EXACT_BAR, (exact, len(cers))
    assert float(np.mean(cers)) <= CER_BAR
    assert spurious <= SPURIOUS_BAR
