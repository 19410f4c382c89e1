"""The detect step: the committed tiny YOLO on a plain Arrow table, failures, bad weights, offline
ultralytics, and the quality of its boxes in a real run against the pool's ground truth."""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pytest
from run_helpers import run_in_process

import captioners.detector  # noqa: F401 - registers the step before curate.registry lists it
from captioners.detector import BOX_TYPE, TINY_YOLO_NAME, TINY_YOLO_WEIGHTS, ultralytics_config_dir
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import SHAPES, FaultRates, make_pool
from curate.synth.scoring import average_precision, match_at_iou, pool_truth
from schemas.tables import STATUS_FAILED_DECODE, empty_sample_table, rows_to_sample_table

CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pa.Table:
    """16 clean samples of an unseen pool (the tiny YOLO was trained on seed 4321)."""
    folder = tmp_path_factory.mktemp("detect_pool")
    make_pool(str(folder), samples=16, shard_size=16, seed=5, faults=FaultRates.none())
    return pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])


@pytest.fixture(scope="module")
def detector() -> StepRunner:
    return StepRunner("detect", "detect", CPU)


def test_committed_weights_exist():
    assert TINY_YOLO_WEIGHTS.is_file()
    assert TINY_YOLO_WEIGHTS.stat().st_size < 10_000_000
    assert (TINY_YOLO_WEIGHTS.parent / "MODEL_CARD.md").is_file()


def test_boxes_labels_scores(detector, shapes):
    out = detector(shapes)
    assert out.schema.field("det_boxes").type == BOX_TYPE
    assert out.schema.field("det_labels").type == pa.list_(pa.string())
    assert out.schema.field("det_scores").type == pa.list_(pa.float32())
    assert out["det_model"].to_pylist() == [TINY_YOLO_NAME] * shapes.num_rows
    assert detector.step.image_size == 160  # read from the checkpoint's train args
    found = 0
    for boxes, labels, scores in zip(
        out["det_boxes"].to_pylist(), out["det_labels"].to_pylist(), out["det_scores"].to_pylist(), strict=True
    ):
        assert len(boxes) == len(labels) == len(scores) <= 20
        found += len(boxes)
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores, strict=True):
            assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0
            assert label in SHAPES
            assert 0.25 <= score <= 1.0
        assert scores == sorted(scores, reverse=True)
    assert found >= shapes.num_rows  # every image has 1-4 shapes


def test_undecodable_images_fail_the_row_only(detector, shapes):
    rows = shapes.slice(0, 5).to_pylist()
    rows[1]["image"] = b"this is not an image"
    rows[3]["image"] = rows[3]["image"][: len(rows[3]["image"]) // 2]  # a truncated JPEG
    out = detector(rows_to_sample_table(rows))
    assert out["status"].to_pylist() == ["success", STATUS_FAILED_DECODE, "success", STATUS_FAILED_DECODE, "success"]
    assert out["error_message"].to_pylist()[1] and out["error_message"].to_pylist()[0] is None
    for name in ("det_boxes", "det_labels", "det_scores", "det_model"):
        assert out[name].null_count == 2
    assert out["drop_reason"].to_pylist()[1] == f"detect:{STATUS_FAILED_DECODE}"
    assert out["keep"].to_pylist() == [True, False, True, False, True]
    # The other rows get exactly what they get on their own (every image is letterboxed alike).
    alone = detector(shapes.slice(0, 5))
    for i in (0, 2, 4):
        assert out["det_boxes"][i].as_py() == alone["det_boxes"][i].as_py()
        assert out["det_labels"][i].as_py() == alone["det_labels"][i].as_py()


def test_empty_table_gets_typed_columns(detector):
    out = detector(empty_sample_table())
    assert out.num_rows == 0
    assert out.schema.field("det_boxes").type == BOX_TYPE
    assert out.schema.field("det_scores").type == pa.list_(pa.float32())


def test_params_change_the_output(shapes):
    out = StepRunner("detect", "detect", {**CPU, "confidence": 0.9, "max_boxes": 1, "prefix": "yolo"})(shapes)
    assert "det_boxes" not in out.column_names
    for scores in out["yolo_scores"].to_pylist():
        assert len(scores) <= 1 and all(s >= 0.9 for s in scores)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights": "/no/such/yolo.pt"}, "weights: value '/no/such/yolo.pt' is not an existing file"),
        ({"weights": "yolo11n.pt"}, "weights: value 'yolo11n.pt' is not an existing file; this step never downloads"),
        (
            {"weights": "yolo-of-my-dreams"},
            "weights: value 'yolo-of-my-dreams' is none of ['curate-tiny-yolo', 'curate-tiny-yolo-world']",
        ),
        ({"confidence": 1.5}, "confidence"),
        ({"threshold": 0.3}, "threshold"),
    ],
)
def test_bad_params_fail_at_construction(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StepRunner("detect", "detect", params)


def test_a_file_that_is_not_a_checkpoint_fails_at_construction(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"weights: {str(bad)!r}")):
        StepRunner("detect", "detect", {"weights": str(bad)})
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        StepRunner("detect", "detect", {"weights": str(text)})


def test_ultralytics_runs_offline_in_our_config_folder(detector):
    from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert not ONLINE and SETTINGS["sync"] is False
    config_dir = ultralytics_config_dir() / "Ultralytics"
    assert config_dir == USER_CONFIG_DIR
    assert (USER_CONFIG_DIR / "Arial.ttf").stat().st_size > 100_000  # check_font finds it, never downloads


# -- quality in a real run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detect_run(ray_session, small_pool_pattern, tmp_path_factory):
    out = tmp_path_factory.mktemp("detect_run")
    run = run_in_process(
        "basic",
        small_pool_pattern,
        out,
        [
            # 0.25 + 0.25 + 0.75 for the actor pools, plus reading and writing: 2 CPUs.
            "steps.0.resources.num_cpus=0.25",
            "steps.1.resources.num_cpus=0.25",
            "steps.2.name=detect",
            "steps.2.resources.num_cpus=0.75",
            "steps.2.resources.batch_size=64",
        ],
    )
    return run


def test_detections_in_a_run_match_the_ground_truth(detect_run, small_pool):
    """Precision and recall at IoU 0.5 (classes must match) of the written det_* columns at the step's
    default confidence 0.25, on the test pool (seed 7, never trained on; basic keeps 900-odd images).
    Measured when written: precision 0.811, recall 0.902 overall; per class the weakest precision is
    hexagon's 0.594 (confused with circles) and the weakest recall star's 0.831. The bars leave about
    0.09 overall and 0.13 per class: CPU inference with every image letterboxed alike is deterministic
    up to float rounding between batch sizes, which moves a box only at the threshold."""
    from curate.catalog import connect

    with connect(detect_run.run_dir.root) as con:
        rows = con.execute(
            "SELECT uid, det_boxes, det_labels, det_scores, det_model, keep FROM samples WHERE det_boxes IS NOT NULL"
        ).fetchall()
        kept = con.execute("SELECT count(*) FROM samples WHERE keep").fetchone()[0]
        failed = con.execute("SELECT count(*) FROM samples WHERE status LIKE 'failed_in_detect%'").fetchone()[0]
    assert failed == 0
    # rows: kept: exactly the rows image_check and basic kept were detected (detect drops nothing).
    assert len(rows) == kept > 800 and all(r[5] for r in rows)
    assert {r[4] for r in rows} == {TINY_YOLO_NAME}
    truth = pool_truth(small_pool)
    predicted = {uid: (boxes, labels, scores) for uid, boxes, labels, scores, _, _ in rows}
    counts = match_at_iou(predicted, truth)
    tp = sum(c["tp"] for c in counts.values())
    precision = tp / sum(c["pred"] for c in counts.values())
    recall = tp / sum(c["gt"] for c in counts.values())
    per_class = {k: (c["tp"] / max(1, c["pred"]), c["tp"] / max(1, c["gt"])) for k, c in counts.items()}
    print(f"detect on seed 7: precision {precision:.3f} recall {recall:.3f} per class {per_class}")
    assert set(counts) <= set(SHAPES)
    assert precision >= 0.72 and recall >= 0.82
    # mAP50 of the step's own output (its boxes are cut at confidence 0.25, so this is a lower bound of
    # the full-curve figure: ultralytics val gives 0.938 on seed 99 at 0.001). The demo pool (seed 0,
    # 3132 kept rows, a perceive run) and this pool both measured 0.879 when written; the bar leaves 0.08.
    ap = average_precision(predicted, {uid: truth[uid] for uid in predicted})
    map50 = float(np.mean(list(ap.values())))
    print(f"detect on seed 7: mAP50 (conf >= 0.25) {map50:.3f}")
    assert map50 >= 0.80, ap
    for label, (p, r) in per_class.items():
        assert p >= 0.45 and r >= 0.70, (label, p, r)
