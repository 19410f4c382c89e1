"""What a stage has left to do for a shard, from its marker, its upstream versions and the parts an
interrupted attempt left (``curate.shard_work``), on real stage folders."""

from __future__ import annotations

import pyarrow as pa

from curate.crashpoints import CrashPlan
from curate.parts import assemble_shard, write_parts
from curate.readers.base import ShardRef
from curate.shard_work import plan_shard_work
from curate.stage_store import StageStore

REF = ShardRef(3, "/pool/00000003.tar", "webdataset")
NO_CRASH = CrashPlan(None, 0, "/nonexistent")


def _store(root, name: str) -> StageStore:
    store = StageStore(root, name)
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


def test_no_marker_computes_every_row(tmp_path):
    work = plan_shard_work(_store(tmp_path, "stage0-x"), REF, [], partial_ok=True)
    assert work.rows is None and work.redo is None and work.covered == 0 and not work.nothing_to_compute


def test_a_current_marker_is_done_and_a_stale_one_is_not(tmp_path):
    store = _store(tmp_path, "stage1-x")
    store.write(3, _rows(list(range(6))), inputs=["v0"], retry=[])
    assert plan_shard_work(store, REF, ["v0"], partial_ok=True) is None
    stale = plan_shard_work(store, REF, ["v0-recomputed"], partial_ok=True)
    assert stale.rows is None and stale.redo is None  # an earlier stage changed: every row again


def test_retryable_rows_are_the_only_ones_computed_again(tmp_path):
    store = _store(tmp_path, "stage0-x")
    version = store.write(3, _rows(list(range(6))), inputs=[], retry=[1, 4])
    work = plan_shard_work(store, REF, [], partial_ok=True)
    assert work.rows == (1, 4) and work.redo == (1, 4) and work.covered == 4 and work.previous_version == version
    # a stage of global decisions only always recomputes whole shards (there is no model to spare)
    whole = plan_shard_work(store, REF, [], partial_ok=False)
    assert whole.rows is None and whole.redo is None


def test_parts_of_an_interrupted_attempt_are_kept(tmp_path):
    store = _store(tmp_path, "stage0-x")
    first = plan_shard_work(store, REF, [], partial_ok=True)
    write_parts(_rows([0, 1, 2]), str(store.parts_root), {3: first.attempt}, NO_CRASH)
    again = plan_shard_work(store, REF, [], partial_ok=True)
    assert again.attempt == first.attempt and len(again.parts) == 1
    assert again.rows == (3, 4, 5) and again.covered == 3 and again.shard_rows == 6
    write_parts(_rows([3, 4, 5]), str(store.parts_root), {3: first.attempt}, NO_CRASH)
    done = plan_shard_work(store, REF, [], partial_ok=True)
    assert done.nothing_to_compute and done.covered == 6
    table = assemble_shard(list(done.parts), 6)
    assert table["row_in_shard"].to_pylist() == list(range(6))


def test_a_retry_attempt_does_not_take_parts_of_another_attempt(tmp_path):
    store = _store(tmp_path, "stage0-x")
    fresh = plan_shard_work(store, REF, [], partial_ok=True)
    write_parts(_rows([0, 1]), str(store.parts_root), {3: fresh.attempt}, NO_CRASH)  # left by a kill
    store.write(3, _rows(list(range(6))), inputs=[], retry=[5])
    retry = plan_shard_work(store, REF, [], partial_ok=True)
    assert retry.attempt != fresh.attempt and retry.parts == () and retry.rows == (5,)
