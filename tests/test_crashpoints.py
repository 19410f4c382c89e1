"""Crash points (``curate.crashpoints``): where tests kill or hold a run to prove resume exact."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from curate.crashpoints import CrashPlan, crash_point


def test_a_crash_point_holds_a_worker_only_on_its_nth_pass(tmp_path, monkeypatch):
    """``name:n:hold``: passes before the n-th go on; the n-th marks itself held and never returns."""
    plan = CrashPlan("part_written:2:hold", 0, str(tmp_path))
    held = tmp_path / "held-part_written"
    crash_point("part_written", plan)  # the first pass goes on
    assert not held.exists()
    second = multiprocessing.get_context("spawn").Process(target=crash_point, args=("part_written", plan))
    second.start()
    try:
        deadline = time.monotonic() + 60  # a guard against a hang: the held file is the event
        while not held.exists() and second.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists() and second.is_alive()
    finally:
        second.kill()
    with pytest.raises(ValueError, match="action 'pause' is not one of"):
        crash_point("part_written", CrashPlan("part_written:1:pause", 0, str(tmp_path)))
    monkeypatch.setenv("CURATE_CRASH_AT", "part_tallied:1:hold")
    with pytest.raises(ValueError, match="'hold' does not apply"):
        crash_point("part_tallied")
