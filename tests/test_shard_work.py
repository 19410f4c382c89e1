"""What a stage has left to do for a shard, from its marker, its upstream versions and the parts an
interrupted attempt left (``curate.shard_work``), on real stage folders: on a local path and on a
real S3 server (the same code runs in Ray tasks on any node)."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pytest
from s3_server import new_bucket

from curate.crashpoints import CrashPlan
from curate.parts import assemble_shard, write_parts
from curate.readers.base import ShardRef
from curate.run_storage import RunStorage
from curate.shard_work import plan_shard_work
from curate.stage_store import StageStore

REF = ShardRef(3, "/pool/00000003.tar", "webdataset")
NO_CRASH = CrashPlan(None, 0, "/nonexistent")


@pytest.fixture(params=["local", "s3"])
def cache(request, tmp_path) -> RunStorage:
    if request.param == "local":
        return RunStorage(str(tmp_path / "run")).child("_cache")
    request.getfixturevalue("s3_env")
    return RunStorage(new_bucket() + "/run").child("_cache")


def _store(cache: RunStorage, name: str) -> StageStore:
    store = StageStore(cache, name)
    store.prepare({"stage": name})
    return store


def _rows(positions: list[int], n: int = 6) -> pa.Table:
    return pa.table(
        {
            "shard_index": pa.array([3] * len(positions), pa.int32()),
            "row_in_shard": pa.array(positions, pa.int32()),
            "shard_rows": pa.array([n] * len(positions), pa.int64()),
            "status": ["success"] * len(positions),
        }
    )


def test_no_marker_computes_every_row(cache):
    work = plan_shard_work(_store(cache, "stage0-x"), REF, [], partial_ok=True)
    assert work.rows is None and work.redo is None and work.covered == 0 and not work.nothing_to_compute


def test_a_current_marker_is_done_and_a_stale_one_is_not(cache):
    store = _store(cache, "stage1-x")
    store.write(3, _rows(list(range(6))), inputs=["v0"], retry=[])
    assert plan_shard_work(store, REF, ["v0"], partial_ok=True) is None
    stale = plan_shard_work(store, REF, ["v0-recomputed"], partial_ok=True)
    assert stale.rows is None and stale.redo is None  # an earlier stage changed: every row again


def test_retryable_rows_are_the_only_ones_computed_again(cache):
    store = _store(cache, "stage0-x")
    version = store.write(3, _rows(list(range(6))), inputs=[], retry=[1, 4])
    work = plan_shard_work(store, REF, [], partial_ok=True)
    assert work.rows == (1, 4) and work.redo == (1, 4) and work.covered == 4 and work.previous_version == version
    # a stage of global decisions only always recomputes whole shards (there is no model to spare)
    whole = plan_shard_work(store, REF, [], partial_ok=False)
    assert whole.rows is None and whole.redo is None


def test_parts_of_an_interrupted_attempt_are_kept(cache):
    store = _store(cache, "stage0-x")
    first = plan_shard_work(store, REF, [], partial_ok=True)
    write_parts(_rows([0, 1, 2]), store.parts, {3: first.attempt}, NO_CRASH)
    again = plan_shard_work(store, REF, [], partial_ok=True)
    assert again.attempt == first.attempt and len(again.parts) == 1
    assert again.rows == (3, 4, 5) and again.covered == 3 and again.shard_rows == 6
    write_parts(_rows([3, 4, 5]), store.parts, {3: first.attempt}, NO_CRASH)
    done = plan_shard_work(store, REF, [], partial_ok=True)
    assert done.nothing_to_compute and done.covered == 6
    table = assemble_shard(store.parts, list(done.parts), 6)
    assert table["row_in_shard"].to_pylist() == list(range(6))


def test_a_retry_attempt_does_not_take_parts_of_another_attempt(cache):
    store = _store(cache, "stage0-x")
    fresh = plan_shard_work(store, REF, [], partial_ok=True)
    write_parts(_rows([0, 1]), store.parts, {3: fresh.attempt}, NO_CRASH)  # left by a kill
    store.write(3, _rows(list(range(6))), inputs=[], retry=[5])
    retry = plan_shard_work(store, REF, [], partial_ok=True)
    assert retry.attempt != fresh.attempt and retry.parts == () and retry.rows == (5,)


def test_a_store_pickled_to_a_worker_writes_where_the_driver_reads(cache):
    store = _store(cache, "stage0-x")
    in_worker = pickle.loads(pickle.dumps(store))  # what a Ray task gets
    assert in_worker == store and in_worker.parts == store.parts
    version = in_worker.write(3, _rows(list(range(6))), inputs=[], retry=[])
    assert store.read_marker(3)["version"] == version and store.read(3).num_rows == 6
    assert store.columns() == ["shard_index", "row_in_shard", "shard_rows", "status"]
    write_parts(_rows([0, 1]), in_worker.parts, {3: "attempt"}, NO_CRASH)
    assert store.parts_in_flight() == 1
    store.clear_parts()
    assert store.parts_in_flight() == 0
