"""The run folder's storage, the same on a local path and on a real S3 server: whole-or-nothing
commits, listings without writers' temporary files, and the exclusive hold (the local lock, the
lease on the object store: refused while its holder lives, taken over once it is dead)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from s3_server import new_bucket

from curate.run_storage import LEASE_NAME, Lease, RunStorage, RunStorageError, StagedFiles

LEASE_S = 4.0  # renewed every second; a stalled renewal would have to be 4 s late to count as dead


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> RunStorage:
    if request.param == "local":
        return RunStorage(str(tmp_path / "run"))
    request.getfixturevalue("s3_env")
    return RunStorage(new_bucket() + "/run")


def test_files_are_committed_whole_and_listed_without_temporaries(storage):
    storage.write_json("_done/00000001.json", {"n": 1})
    storage.write_bytes("_done/00000000.json", b"{}")
    assert storage.read_json("_done/00000001.json") == {"n": 1}
    with pytest.raises(RuntimeError, match="writer died"), storage.writer("_done/00000002.json") as f:
        f.write(b"half")
        raise RuntimeError("writer died")
    assert not storage.exists("_done/00000002.json")  # nothing of a failed writer is committed
    assert storage.list("_done", "*.json") == ["00000000.json", "00000001.json"]
    storage.remove("_done")
    assert storage.list("_done") == [] and not storage.exists("_done/00000000.json")
    storage.remove("_done")  # nothing left to remove: not an error


def test_a_streamed_file_is_invisible_until_its_writer_ends(storage):
    with storage.writer("shards/00000000.tar") as f:
        f.write(b"x" * 100_000)
        assert not storage.exists("shards/00000000.tar")
    assert storage.read_bytes("shards/00000000.tar") == b"x" * 100_000
    assert storage.url("shards/00000000.tar").endswith("/run/shards/00000000.tar")


def test_staged_files_appear_only_when_committed_and_a_failed_commit_leaves_nothing(storage):
    with StagedFiles(storage) as files:
        with open(files.path("shards/00000000.tar"), "wb") as f:
            f.write(b"tar")
        with open(files.path("split/a/00000000.parquet"), "wb") as f:
            f.write(b"pq")
        assert storage.list("shards") == [] and not storage.exists("split/a/00000000.parquet")
        files.commit()
    assert storage.read_bytes("shards/00000000.tar") == b"tar"
    assert storage.read_bytes("split/a/00000000.parquet") == b"pq"
    with pytest.raises(RuntimeError, match="writer died"), StagedFiles(storage) as files:
        staged = files.path("shards/00000001.tar")
        with open(staged, "wb") as f:
            f.write(b"half")
        raise RuntimeError("writer died")
    assert storage.list("shards") == ["00000000.tar"]  # nothing of the failed shard, not even its temporary
    assert not os.path.exists(staged)


def test_a_held_folder_is_refused_to_a_second_holder(storage):
    second, in_use = RunStorage(storage.url()), "in use by another curate run"
    with storage.hold(LEASE_S), pytest.raises(RunStorageError, match=in_use), second.hold(LEASE_S):
        pass
    with storage.hold(LEASE_S):  # released: held again at once
        pass


def test_a_dead_holders_lease_is_taken_over_once_unchanged_for_a_whole_lease(s3_env):
    storage = RunStorage(new_bucket() + "/run")
    dead = {"host": "gone", "pid": 1, "token": "dead", "lease_s": LEASE_S, "renewed": 0}
    storage.write_json(LEASE_NAME, dead)  # what a killed run leaves: a lease nobody renews
    started = time.monotonic()
    with storage.hold(LEASE_S) as lease:
        waited = time.monotonic() - started
        assert storage.read_json(LEASE_NAME)["token"] == lease.holder["token"]
    assert waited >= LEASE_S  # it watched the lease a whole lease long before taking it
    assert not storage.exists(LEASE_NAME)


def test_of_two_runs_taking_over_one_dead_lease_exactly_one_wins(s3_env):
    storage = RunStorage(new_bucket() + "/run")
    storage.write_json(LEASE_NAME, {"token": "dead", "pid": 1, "host": "gone"})
    outcomes: list[str] = []
    release = threading.Event()

    def take() -> None:
        try:
            with RunStorage(storage.url()).hold(LEASE_S):
                outcomes.append("held")
                release.wait(60)
        except RunStorageError:
            outcomes.append("refused")
            release.set()

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["held", "refused"]


def test_a_holder_whose_lease_was_taken_over_knows_it_and_stops(s3_env):
    storage = RunStorage(new_bucket() + "/run")
    with storage.hold(LEASE_S) as lease:
        assert isinstance(lease, Lease)
        lease.check()  # still ours
        # another run overwrote the lease (as a taker would, had this run stalled a whole lease)
        storage.write_json(LEASE_NAME, {"token": "other", "pid": 2, "host": "elsewhere"})
        assert lease.lost.wait(60)  # its next renewal finds the lease changed under it
        with pytest.raises(RunStorageError, match="taken over by another run"):
            lease.check()
    assert json.loads(storage.read_bytes(LEASE_NAME))["token"] == "other"  # not removed on release


def test_a_run_whose_lease_was_taken_over_stops_at_its_next_check(s3_env, monkeypatch):
    from curate.rundir import RunDir, RunFolderError

    monkeypatch.setenv("CURATE_LEASE_S", str(LEASE_S))
    run = RunDir(new_bucket() + "/run")
    with run.lock():
        run.check_hold()  # still ours
        run.storage.write_json(LEASE_NAME, {"token": "other", "pid": 2, "host": "elsewhere"})
        assert run._lease.lost.wait(60)
        with pytest.raises(RunFolderError, match="taken over by another run"):
            run.check_hold()
    run.check_hold()  # outside its hold a run checks nothing


def test_a_bad_lease_setting_fails_naming_it(monkeypatch, tmp_path):
    from curate.rundir import RunDir, RunFolderError

    monkeypatch.setenv("CURATE_LEASE_S", "soon")
    refused = pytest.raises(RunFolderError, match="CURATE_LEASE_S: value 'soon': must be a number of seconds > 0")
    with refused, RunDir(tmp_path / "run").lock():
        pass
