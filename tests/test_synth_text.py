"""Words on signs in the synthetic pool (make_pool's text_rate): ground truth, and nothing else moves."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from curate.cli import main as cli_main
from curate.synth import FaultRates, load_ground_truth, make_pool
from curate.synth.text import WORDS

RATES = FaultRates(near_duplicate=0.1, swapped_caption=0.05, corrupt_image=0.05, failed_download=0.05)


def _members(root: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*.tar"))):
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                f = tf.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> tuple[str, str, dict]:
    plain, signs = str(tmp_path_factory.mktemp("plain")), str(tmp_path_factory.mktemp("signs"))
    make_pool(plain, samples=80, shard_size=40, seed=3, faults=RATES)
    summary = make_pool(signs, samples=80, shard_size=40, seed=3, faults=RATES, text_rate=0.5)
    return plain, signs, summary


def assert_same_files(left: str, right: str) -> None:
    """Every file of pool ``left`` is byte for byte the same file in pool ``right``."""
    for name in sorted(os.listdir(left)):
        with open(os.path.join(left, name), "rb") as a, open(os.path.join(right, name), "rb") as b:
            assert a.read() == b.read(), name


def test_rate_zero_is_the_default_pool(pools, tmp_path):
    plain, _, _ = pools
    again = str(tmp_path / "zero")
    summary = make_pool(again, samples=80, shard_size=40, seed=3, faults=RATES, text_rate=0.0)
    assert "texts" not in summary
    assert_same_files(plain, again)
    assert load_ground_truth(plain)["text_word"].null_count == 80


def test_signs_change_only_their_own_samples(pools):
    """Scenes without a sign are byte-identical to the pool without signs; a scene with one keeps its
    shapes, background, caption and everything else in its json, and differs only around the sign."""
    plain, signs, summary = pools
    a, b = _members(plain), _members(signs)
    assert a.keys() == b.keys()
    with_text = 0
    for name in sorted(n for n in a if n.endswith(".json")):
        ma, mb = json.loads(a[name]), json.loads(b[name])
        key = name[: -len(".json")]
        text = mb.get("gt", {}).pop("text", None)
        mb.pop("sha256"), ma.pop("sha256")
        assert ma == mb, name
        assert a[key + ".txt"] == b[key + ".txt"]
        if text is None:
            assert a[key + ".jpg"] == b[key + ".jpg"], name
            continue
        with_text += 1
        if ma["gt"]["fault"] == "corrupt_image":
            continue
        ia = np.asarray(Image.open(io.BytesIO(a[key + ".jpg"])).convert("L"), np.int16)
        ib = np.asarray(Image.open(io.BytesIO(b[key + ".jpg"])).convert("L"), np.int16)
        x0, y0, x1, y1 = text["box"]
        inside = np.zeros(ia.shape, bool)
        inside[y0:y1, x0:x1] = True
        diff = np.abs(ia - ib)
        assert diff[inside].mean() > 30, name  # the word is there
        far = np.ones(ia.shape, bool)  # JPEG blocks bleed a little: look past the plate and a block
        pad = 8 + max(x1 - x0, y1 - y0)
        far[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = False
        assert diff[far].mean() < 3, name
    assert with_text == summary["texts"]
    assert 20 <= with_text <= 50  # 0.5 of the 76 downloaded, less the scenes with no free place


def test_ground_truth_words_and_boxes(pools):
    _, signs, _ = pools
    table = load_ground_truth(signs)
    rows = [r for r in table.to_pylist() if r["text_word"] is not None]
    assert rows and table.schema.field("text_box").type.value_type.bit_width == 32
    words = {w.lower() for w in WORDS}
    metas = {}
    for member, data in _members(signs).items():
        if member.endswith(".json"):
            metas[json.loads(data)["uid"]] = json.loads(data)
    cases = set()
    for r in rows:
        word = r["text_word"]
        assert word.lower() in words
        cases.add("upper" if word.isupper() else "lower" if word.islower() else "title")
        meta = metas[r["uid"]]
        x0, y0, x1, y1 = r["text_box"]
        assert 0 <= x0 < x1 <= meta["width"] and 0 <= y0 < y1 <= meta["height"]
        assert meta["gt"]["text"] == {"word": word, "box": r["text_box"]}
        for shape in meta["gt"]["shapes"]:  # a sign never covers a shape
            sx0, sy0, sx1, sy1 = shape["bbox"]
            assert min(x1, sx1) <= max(x0, sx0) or min(y1, sy1) <= max(y0, sy0)
    assert cases == {"upper", "lower", "title"}
    assert all(r["status"] != "failed_to_download" for r in rows)


def test_text_rate_is_validated(tmp_path):
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="text_rate"):
            make_pool(str(tmp_path / "bad"), samples=2, shard_size=2, text_rate=bad)


def test_cli_text_rate(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["make-pool", "--output", str(out), "--samples", "12", "--shard-size", "12", "--seed", "4"]
    assert cli_main([*args, "--text-rate", "1"]) == 0
    assert "'texts': " in capsys.readouterr().out
    assert load_ground_truth(str(out))["text_word"].null_count < 12
    assert cli_main([*args, "--text-rate", "2"]) == 2


# -- repeat_rate: several shapes of one colour and kind (GBC compositions) ------------------------------


def test_repeat_rate_zero_is_the_default_pool(pools, tmp_path):
    plain, _, _ = pools
    again = str(tmp_path / "zero")
    summary = make_pool(again, samples=80, shard_size=40, seed=3, faults=RATES, repeat_rate=0.0)
    assert "repeat_rate" not in summary
    assert_same_files(plain, again)


def test_repeats_copy_the_first_shape_and_the_captions_follow(tmp_path):
    out = str(tmp_path / "rep")
    summary = make_pool(out, samples=80, shard_size=80, seed=3, faults=FaultRates.none(), repeat_rate=1.0)
    assert summary["repeat_rate"] == 1.0
    several = 0
    for name, data in _members(out).items():
        if not name.endswith(".json"):
            continue
        gt = json.loads(data)["gt"]
        phrases = {(s["color"], s["label"]) for s in gt["shapes"]}
        assert len(phrases) == 1  # at rate 1 every shape is the first one's colour and kind
        several += len(gt["shapes"]) > 1
        color, label = phrases.pop()
        assert color in gt["true_caption"] and label in gt["true_caption"]
    assert several > 30


def test_repeat_rate_is_validated_and_on_the_cli(tmp_path, capsys):
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="repeat_rate"):
            make_pool(str(tmp_path / "bad"), samples=2, shard_size=2, repeat_rate=bad)
    args = ["make-pool", "--output", str(tmp_path / "cli"), "--samples", "8", "--shard-size", "8"]
    assert cli_main([*args, "--repeat-rate", "0.5"]) == 0
    assert "'repeat_rate': 0.5" in capsys.readouterr().out
    assert cli_main([*args, "--repeat-rate", "2"]) == 2
