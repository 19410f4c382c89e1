"""End to end on the synthetic pool: the basic recipe against the pool's ground truth, the
output shards against webdataset, the catalog against plain duckdb."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import webdataset as wds

from curate.catalog import connect
from curate.synth import load_ground_truth

EXPECTED_REASON = {
    "non_english": "basic:non_english",
    "too_short": "basic:caption_too_short",
    "empty_caption": "basic:empty_caption",
    "tiny_image": "basic:image_too_small",
    "extreme_aspect": "basic:extreme_aspect_ratio",
    "corrupt_image": "image_check:failed_to_decode",
    "failed_download": "read:failed_to_download",
}
CLEAN = ("none", "swapped_caption", "near_duplicate")  # the basic filter must keep these


def test_every_fault_gets_its_reason_and_no_clean_sample_is_dropped(basic_run, small_pool):
    truth = {r["uid"]: r for r in load_ground_truth(str(small_pool)).to_pylist()}
    with connect(basic_run.run_dir.root) as con:
        rows = con.sql("select uid, keep, drop_reason, status from samples").fetchall()
    assert len(rows) == len(truth) == 1200
    seen = Counter()
    for uid, keep, reason, status in rows:
        fault = truth[uid]["fault"]
        seen[fault] += 1
        if fault in CLEAN:
            assert keep, f"clean sample {uid} ({fault}) dropped: {reason}"
        else:
            assert not keep and reason == EXPECTED_REASON[fault], (uid, fault, reason, status)
    assert all(seen[f] > 0 for f in EXPECTED_REASON), seen  # the pool really had every fault


def test_output_shards_read_with_webdataset_and_match_sizes(basic_run):
    shards = basic_run.run_dir.shards
    sizes = json.loads((shards / "sizes.json").read_text())
    assert sorted(sizes) == [f"{i:08d}.tar" for i in range(4)]
    keys = set()
    for name, n in sizes.items():
        samples = list(wds.WebDataset(str(shards / name), shardshuffle=False))
        assert len(samples) == n
        assert json.loads((shards / name.replace(".tar", "_stats.json")).read_text())["successes"] == n
        for s in samples:
            assert "." not in s["__key__"] and s["__key__"] not in keys
            keys.add(s["__key__"])
            meta = json.loads(s["json"])
            assert s["txt"].decode() == meta["caption"] and meta["keep"] is True
            assert s["jpg"][:2] == b"\xff\xd8"
    assert sum(sizes.values()) == basic_run.stats["written"] > 0


def test_counters_add_up(basic_run):
    stats = json.loads(basic_run.run_dir.stats.read_text())
    check, basic = stats["steps"]["image_check"], stats["steps"]["basic"]
    assert check["in"] == check["kept"] + sum(check["failed"].values())
    assert basic["in"] == check["kept"] == basic["kept"] + sum(basic["dropped"].values())
    assert basic["kept"] == stats["written"]


def test_catalog_answers_without_project_code(basic_run):
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True);"
        "print(con.execute('select count(*) from samples').fetchone()[0]);"
        "print(con.execute(\"select count(*) from decisions where step='basic' and not keep\").fetchone()[0]);"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('curate', 'filters', 'schemas')]"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(basic_run.run_dir.catalog)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    total, dropped = map(int, out.stdout.split())
    assert total == 1200
    assert dropped == sum(basic_run.stats["steps"]["basic"]["dropped"].values())


def test_query_cli_formats(basic_run, tmp_path):
    from curate.cli import main

    root = str(basic_run.run_dir.root)
    assert (
        main(["query", root, "select count(*) as n from kept", "--format", "csv", "--output", str(tmp_path / "q.csv")])
        == 0
    )
    assert (tmp_path / "q.csv").read_text().splitlines() == ["n", str(basic_run.stats["written"])]
    assert (
        main(
            [
                "query",
                root,
                "select step, count(*) as n from decisions group by all",
                "--format",
                "parquet",
                "--output",
                str(tmp_path / "q.parquet"),
            ]
        )
        == 0
    )
    import pyarrow.parquet as pq

    assert set(pq.read_table(tmp_path / "q.parquet")["step"].to_pylist()) >= {"basic", "image_check", "read"}
