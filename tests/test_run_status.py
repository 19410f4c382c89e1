"""``curate status``: what a killed run has done and what a re-run will redo, checked against what
the re-run then computes; who holds the folder; the last error. And the progress lines a re-run
prints when its output is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import pool_pattern
from report_browser import check_report
from run_helpers import run_cli

from curate.run_status import describe, run_status
from curate.rundir import RunDir
from curate.synth import FaultRates, make_pool


def _status_cli(run, fmt: str = "text") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "curate.cli", "status", str(run), "--format", fmt]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_status_of_a_killed_run_names_what_the_rerun_redoes(ray_session, tmp_path):
    # 4 shards of 60; t=8 so that balancing sub-samples the frequent entries of so small a pool.
    make_pool(str(tmp_path / "pool"), samples=240, shard_size=60, seed=5, faults=FaultRates(corrupt_image=0.05))
    pattern, out, t = pool_pattern(tmp_path / "pool"), tmp_path / "run", ["steps.metaclip.params.t=8"]
    # Killed after the metaclip barrier's state was saved: stage 0 is done, stage 1 has not started.
    killed = run_cli("metaclip", pattern, out, ray_session, t, crash_at="barrier_saved", progress=True)
    assert killed.returncode == -9, killed.stdout[-2000:]
    # Its stdout is a pipe: stage 0 (a Ray Data pass) printed plain progress lines, not Ray Data's own.
    lines = [line for line in killed.stdout.splitlines() if line.startswith("stage 0 [image_check, basic, metaclip")]
    assert lines and "240/240 rows, 4/4 shards" in lines[-1] and "done in" in lines[-1], killed.stdout[-3000:]
    assert "logging_progress" not in killed.stdout and "Running Dataset" not in killed.stdout

    shown = _status_cli(out, "json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["state"] == "interrupted" and status["holder"] is None
    assert status["shards"] == 4 and status["final_done"] == 0
    first, second = status["stages"]
    assert (first["done"], first["to_compute"], first["barrier"], first["barrier_done"]) == (4, [], "metaclip", True)
    assert (second["done"], second["to_compute"]) == (0, [0, 1, 2, 3])
    assert status["final_to_write"] == [0, 1, 2, 3]
    text = _status_cli(out).stdout
    assert "interrupted (no curate process holds it)" in text
    assert "a re-run of the same command will compute stage 1: shards 0-3" in text
    assert "and write final shards 0-3" in text

    # The re-run computes exactly that, and says so in plain progress lines (a stage of shard tasks).
    again = run_cli("metaclip", pattern, out, ray_session, t, progress=True)
    assert again.returncode == 0, again.stdout[-3000:]
    computed = [s["computed"] for s in json.loads((out / "stages.json").read_text())]
    assert computed == [len(first["to_compute"]), len(second["to_compute"])] == [0, 4]
    progress = [line for line in again.stdout.splitlines() if line.startswith("stage 1 [metaclip.decide]")]
    assert progress and "4/4 shards" in progress[-1] and "done in" in progress[-1], again.stdout[-3000:]

    # Its report shows the MetaCLIP balancing (entry counts before and after), in a real browser.
    check_report(
        out,
        "report-metaclip.png",
        sections={"funnel", "clusters", "galleries"},
        figures={"fig-metaclip-entries"},
        galleries={"gallery-kept", "gallery-metaclip-balanced-out"},
    )

    after = run_status(out)
    assert after.state == "finished" and after.final_done == 4 and after.final_to_write == []
    assert "a re-run of the same command has nothing to compute" in describe(after)
    assert any(line.startswith("failures (in finished shards):") for line in describe(after))

    # While a process holds the folder, status says so (and does not guess what a re-run would do).
    run = RunDir(out)
    with run.lock():
        held = run_status(out)
        assert held.state == "running" and held.holder == str(os.getpid())
        assert not any("re-run" in line for line in describe(held))
        run.record_error(RuntimeError("the model server went away"))
    failed = run_status(out)
    assert failed.state == "failed" and failed.last_error == "RuntimeError: the model server went away"
    assert describe(failed)[-1] == "last error: RuntimeError: the model server went away"
