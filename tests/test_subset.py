"""DataComp subset files: format, round trips, the subset step, export and report on a run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import filters.subset  # noqa: F401 - registers the step before the registry lists it
from curate.identity import uid_to_u64_pair
from curate.steps import StepRunner
from curate.subset import (
    SUBSET_DTYPE,
    SubsetError,
    SubsetIndex,
    export_run_subset,
    is_sorted,
    read_subset,
    subset_report,
    subset_to_uids,
    uids_to_pairs,
    uids_to_subset,
    write_subset,
)
from schemas.tables import rows_to_sample_table

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _uids(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(16).hex() for _ in range(n)]


def test_dtype_and_bit_layout_match_datacomp():
    uid = "0123456789abcdeffedcba9876543210"
    arr = uids_to_subset([uid])
    assert arr.dtype == np.dtype("u8,u8") == SUBSET_DTYPE
    assert arr.dtype.names == ("f0", "f1") and arr.dtype["f0"] == np.dtype("<u8")
    # DataComp's baselines: (int(uid[:16], 16), int(uid[16:32], 16)).
    assert (int(arr[0]["f0"]), int(arr[0]["f1"])) == (0x0123456789ABCDEF, 0xFEDCBA9876543210)
    assert (int(arr[0]["f0"]), int(arr[0]["f1"])) == uid_to_u64_pair(uid)


def test_round_trip_sorted_with_duplicates(tmp_path):
    uids = _uids(500)
    with_dups = uids + uids[:7] + [uids[0].upper()]
    arr = uids_to_subset(with_dups)
    assert len(arr) == 508
    assert is_sorted(arr)
    assert np.array_equal(arr, np.sort(np.array([uid_to_u64_pair(u) for u in with_dups], dtype="u8,u8")))
    assert subset_to_uids(arr) == sorted(u.lower() for u in with_dups)  # hex order is numeric order
    path = tmp_path / "subset.npy"
    assert write_subset(path, with_dups) == 508
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subset.npy"]  # no temporary left behind
    loaded = np.load(path)
    assert loaded.dtype == np.dtype("u8,u8") and np.array_equal(loaded, arr)
    assert np.array_equal(read_subset(path), arr)
    assert np.array_equal(read_subset(path, mmap=True), arr)
    assert subset_to_uids(uids_to_pairs(uids)) == uids  # unsorted pairs keep the given order
    write_subset(path, arr[::-1].copy())  # entries are accepted too, and sorted
    assert np.array_equal(read_subset(path), arr)
    assert len(uids_to_subset([])) == 0


@pytest.mark.parametrize("bad", ["xyz", "0" * 31, "g" * 32, "0" * 30 + " 1", None, "é" * 16])
@pytest.mark.parametrize("given_as", ["list", "arrow"])
def test_invalid_uids_are_named(bad, given_as):
    uids = ["0" * 32, bad] if given_as == "list" else pa.array(["0" * 32, bad], pa.string())
    with pytest.raises(SubsetError, match="is not 32 hex characters"):
        uids_to_subset(uids)


def test_arrow_uids_read_from_their_buffer_equal_the_list_path():
    """A column of uids becomes entries straight from its data buffer: the same entries as from a
    list, for a slice of an array (its offsets do not start at 0) and for a chunked column."""
    uids = [f"{i:032x}" for i in range(0, 2**64 * 5, 2**61 + 12345)] + ["AB" * 16]
    column = pa.array(["f" * 32, *uids, "e" * 32], pa.string())
    assert np.array_equal(uids_to_pairs(column.slice(1, len(uids))), uids_to_pairs(uids))
    chunked = pa.chunked_array([pa.array(uids[:3]), pa.array(uids[3:])])
    assert np.array_equal(uids_to_pairs(chunked), uids_to_pairs(uids))
    assert len(uids_to_pairs(pa.array([], pa.string()))) == 0


def test_read_errors_name_file_and_dtypes(tmp_path):
    with pytest.raises(SubsetError, match=r"missing\.npy.*does not exist"):
        read_subset(tmp_path / "missing.npy")
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((3, 2), dtype=np.uint64))
    with pytest.raises(SubsetError, match=r"plain\.npy.*found dtype uint64 with shape \(3, 2\); expected .*u8"):
        read_subset(plain)
    named = tmp_path / "named.npy"
    np.save(named, np.zeros(3, dtype=[("hi", "<u8"), ("lo", "<u8")]))
    with pytest.raises(SubsetError, match="found dtype"):
        read_subset(named)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy at all")
    with pytest.raises(SubsetError, match=r"garbage\.npy.*not a readable \.npy"):
        read_subset(garbage)
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as f:
        np.savez(f, a=uids_to_subset(_uids(2)))
    with pytest.raises(SubsetError, match="npz archive"):
        read_subset(archive)


def test_index_counts_duplicates_and_collisions():
    uids = _uids(200, seed=1)
    subset = uids_to_subset(uids + uids[:3] + uids[:1])
    query = uids_to_pairs([uids[0], uids[1], uids[5], _uids(1, seed=99)[0]])
    assert SubsetIndex(subset).counts(query).tolist() == [3, 2, 1, 0]
    assert SubsetIndex(subset, copy_limit=0).counts(query).tolist() == [3, 2, 1, 0]
    # Many entries sharing their high 64 bits: the run-length fallback.
    same_high = [f"{7:016x}{i:016x}" for i in range(100)]
    subset = uids_to_subset(same_high + same_high[:2])
    query = uids_to_pairs([same_high[0], same_high[50], f"{7:016x}{999:016x}"])
    assert SubsetIndex(subset).counts(query).tolist() == [2, 1, 0]
    assert SubsetIndex(uids_to_subset([])).counts(query).tolist() == [0, 0, 0]


def _table(uids, statuses=None):
    statuses = statuses or ["success"] * len(uids)
    rows = [
        {"uid": u, "shard_index": 0, "row_in_shard": i, "shard_rows": len(uids), "caption": "x", "status": s}
        for i, (u, s) in enumerate(zip(uids, statuses, strict=True))
    ]
    return rows_to_sample_table(rows)


def test_subset_step_counts_repeat_and_decisions(tmp_path):
    uids = _uids(6, seed=2)
    path = tmp_path / "subset.npy"
    write_subset(path, [uids[0], uids[1], uids[1], uids[1], uids[4], uids[5]])
    table = _table(uids, ["success"] * 5 + ["failed_to_download"])
    out = StepRunner("subset", "sub", {"path": str(path)})(table)
    assert out["subset_count"].type == pa.int32() and out["repeat"].type == pa.int32()
    assert out["subset_count"].to_pylist() == [1, 3, 0, 0, 1, None]
    assert out["repeat"].to_pylist() == [1, 3, 0, 0, 1, None]
    assert out["keep"].to_pylist() == [True, True, False, False, True, False]
    assert out["drop_reason"].to_pylist()[2:4] == ["sub:not_in_subset"] * 2
    assert out["drop_reason"][5].as_py() == "read:failed_to_download"


def test_subset_step_accepts_an_unsorted_file(tmp_path):
    uids = _uids(50, seed=3)
    path = tmp_path / "unsorted.npy"
    np.save(path, uids_to_pairs(uids)[::-1].copy())
    out = StepRunner("subset", "sub", {"path": str(path)})(_table(uids[:5] + _uids(1, seed=4)))
    assert out["subset_count"].to_pylist() == [1, 1, 1, 1, 1, 0]


def test_subset_step_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"path: subset file .*nope\.npy.* does not exist"):
        StepRunner("subset", "sub", {"path": str(tmp_path / "nope.npy")})
    bad = tmp_path / "bad.npy"
    np.save(bad, np.arange(4))
    with pytest.raises(SubsetError, match=r"bad\.npy.*found dtype int64"):
        StepRunner("subset", "sub", {"path": str(bad)})


@pytest.fixture
def fake_run(tmp_path):
    """A run folder with just what export and report read: catalog.duckdb with the samples and
    sidecars views (one and the same here: the run left no column in its source)."""
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    uids = _uids(40, seed=5)
    keep = [i % 3 != 0 for i in range(40)]
    pq.write_table(pa.table({"uid": uids[:20], "keep": keep[:20]}), run / "shards" / "00000000.parquet")
    pq.write_table(pa.table({"uid": uids[20:], "keep": keep[20:]}), run / "shards" / "00000001.parquet")
    con = duckdb.connect(str(run / "catalog.duckdb"))
    con.execute(f"CREATE VIEW sidecars AS SELECT * FROM read_parquet('{run}/shards/*.parquet')")
    con.execute("CREATE VIEW samples AS SELECT * FROM sidecars")
    con.close()
    return run, uids, keep


def test_export_run_subset(fake_run, tmp_path):
    run, uids, keep = fake_run
    out = tmp_path / "kept.npy"
    assert export_run_subset(run, out) == sum(keep)
    assert subset_to_uids(read_subset(out)) == sorted(u for u, k in zip(uids, keep, strict=True) if k)
    assert export_run_subset(run, out, where="NOT keep AND uid LIKE '%a%'") == sum(
        1 for u, k in zip(uids, keep, strict=True) if not k and "a" in u
    )
    with pytest.raises(ValueError, match="where: 'no_such_column' is not a valid condition"):
        export_run_subset(run, out, where="no_such_column")
    with pytest.raises(FileNotFoundError, match="catalog.duckdb"):
        export_run_subset(tmp_path / "not_a_run", out)


def test_subset_report(fake_run, tmp_path):
    run, uids, _ = fake_run
    path = tmp_path / "subset.npy"
    foreign = _uids(4, seed=6)
    write_subset(path, uids[:10] + uids[:3] + foreign + foreign[:1])
    report = subset_report(run, path)
    assert report == {
        "subset": str(path),
        "entries": 18,
        "distinct_uids": 14,
        "duplicates": 4,
        "matched_uids": 10,
        "matched_rows": 10,
        "missing_uids": 4,
        "pool_rows": 40,
    }


def _load_bench_module():
    spec = importlib.util.spec_from_file_location("datacomp_meta", BENCH / "datacomp_meta.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["datacomp_meta"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_datacomp_metadata_is_deterministic_and_readable(tmp_path):
    from curate.readers.base import ShardRef
    from curate.readers.datacomp_reader import read_datacomp_shard

    gen = _load_bench_module()
    kwargs = {"shards": 2, "rows_per_shard": 300, "seed": 3, "dims": {"b32_img": 32, "l14_img": 48}}
    paths = gen.make_datacomp_metadata(tmp_path / "a", **kwargs)
    again = gen.make_datacomp_metadata(tmp_path / "b", **kwargs)
    assert [Path(p).name for p in paths] == ["00000000.parquet", "00000001.parquet"]
    tables = [pq.read_table(p) for p in paths]
    for p, q, t in zip(paths, again, tables, strict=True):
        assert t.equals(pq.read_table(q))
        a, b = np.load(p.replace(".parquet", ".npz")), np.load(q.replace(".parquet", ".npz"))
        assert a["l14_img"].shape == (300, 48) and a["l14_img"].dtype == np.float16
        assert np.array_equal(a["b32_img"], b["b32_img"])
        assert np.allclose(np.linalg.norm(a["b32_img"].astype(np.float32), axis=1), 1.0, atol=2e-3)
    all_uids = [u for t in tables for u in t["uid"].to_pylist()]
    assert len(set(all_uids)) == 600 and all(len(u) == 32 for u in all_uids)
    texts = [x for t in tables for x in t["text"].to_pylist()]
    assert sum(not x.strip() for x in texts) > 0 and sum(len(x.split()) >= 3 for x in texts) > 400
    scores = np.concatenate([t["clip_b32_similarity_score"].to_numpy() for t in tables])
    assert tables[0]["clip_b32_similarity_score"].type == pa.float32() and 0.05 < scores.min() < scores.max() < 0.45
    table = read_datacomp_shard(ShardRef(0, paths[0], "datacomp"))
    assert table.num_rows == 300 and table["l14_img"].type == pa.list_(pa.float16(), 48)
    # A subset of the generated pool round-trips through the subset step.
    subset = tmp_path / "s.npy"
    write_subset(subset, all_uids[:100:2])
    out = StepRunner("subset", "sub", {"path": str(subset)})(table)
    assert out["keep"].to_pylist() == [i < 100 and i % 2 == 0 for i in range(300)]
