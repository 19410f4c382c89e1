"""The staged engine end to end: model steps on kept rows only, the stage cache, pixels fetched by
range in later stages, and exact resume of a three-stage run killed at every kind of point."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from run_helpers import run_cli, run_in_process, snapshot

from curate.catalog import connect

# Three stages without a model, so that kill-and-resume runs stay quick: stage 0 reads the pool
# (pixels), the two global steps cut it, and the sink fetches the kept images back by byte range.
THREE_STAGES = [
    "steps.2.name=clip_fraction",
    "steps.2.id=lang_top",
    "steps.2.rows=kept",
    "steps.2.params.score_column=lang_score",
    "steps.2.params.fraction=0.9",
    "steps.2.resources.num_cpus=0.25",
    "steps.3.name=clip_score",
    "steps.3.id=wide_enough",
    "steps.3.params.score_column=aspect_ratio",
    "steps.3.params.threshold=1.05",
    "steps.3.resources.num_cpus=0.25",
    "steps.4.name=clip_fraction",
    "steps.4.id=side_top",
    "steps.4.rows=kept",
    "steps.4.params.score_column=min_side",
    "steps.4.params.fraction=0.8",
    "steps.4.resources.num_cpus=0.25",
]


@pytest.fixture(scope="module")
def full_run(ray_session, small_pool_pattern, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return run_in_process("curate_full", small_pool_pattern, out, ["steps.semdedup.params.num_clusters=8"])


def test_curate_full_embeds_only_what_basic_kept(full_run):
    assert [s["computed"] for s in full_run.stages] == [4, 4, 4]
    with connect(full_run.run_dir.root) as con:
        rows = con.execute(
            "SELECT decisions, clip_image_emb IS NOT NULL, clip_score IS NOT NULL, text_emb IS NOT NULL, keep "
            "FROM samples"
        ).fetchall()
    assert len(rows) == 1200
    dropped_by_basic = 0
    for decisions, image_emb, score, text_emb, keep in rows:
        by_step = {d["step"]: d for d in decisions}
        basic_kept = (
            "basic" in by_step
            and by_step["basic"]["keep"]
            and all(by_step[s]["keep"] for s in ("read", "image_check") if s in by_step)
        )
        assert image_emb == score == basic_kept  # embedded exactly the rows basic kept
        assert text_emb == keep  # text embeddings only for what selection kept at the end
        if "basic" in by_step and not by_step["basic"]["keep"]:
            dropped_by_basic += 1
            assert "clip_embed" not in by_step and "semdedup" not in by_step
    assert dropped_by_basic > 100
    steps = full_run.stats["steps"]
    assert steps["clip_embed"]["in"] == steps["basic"]["kept"]
    assert steps["semdedup"]["in"] == steps["clip_embed"]["kept"]
    assert steps["clip_fraction"]["in"] == steps["semdedup"]["kept"]
    assert steps["text_embed"]["in"] == steps["clip_fraction"]["kept"] == full_run.stats["written"]
    manifest = json.loads((full_run.run_dir.root / "manifest.json").read_text())
    assert sum(b["sequences"] for b in manifest["buckets"]) > full_run.stats["written"]


def _stage_files(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in (run / "_cache").glob("stage*/*.parquet")}


def test_a_changed_fraction_recomputes_only_from_its_barrier(full_run, small_pool_pattern, ray_session):
    from curate.config import load_recipe
    from curate.runner import run_recipe

    root = full_run.run_dir.root
    before = _stage_files(root)
    recipe = load_recipe(
        "curate_full",
        ["steps.semdedup.params.num_clusters=8", "steps.clip_fraction.params.fraction=0.6", "ray.progress_bars=false"],
        input_path=small_pool_pattern,
        output_path=str(root),
    )
    result = run_recipe(recipe, overwrite=True)
    stages = result.stages
    assert [(s["computed"], s["reused"]) for s in stages] == [(0, 4), (0, 4), (4, 0)]
    assert [(s["barrier"]["step"], s["barrier"]["reused"]) for s in stages[:2]] == [
        ("semdedup", True),
        ("clip_fraction", False),
    ]
    after = _stage_files(root)
    reused = [
        name for name in before if name.startswith(("_cache/" + stages[0]["cache"], "_cache/" + stages[1]["cache"]))
    ]
    assert len(reused) == 8 and all(after[n] == before[n] for n in reused)  # not even rewritten
    assert result.stats["written"] < full_run.stats["written"]
    # The first fraction's outputs are still cached: going back to it computes nothing at all.
    back = load_recipe(
        "curate_full",
        ["steps.semdedup.params.num_clusters=8", "ray.progress_bars=false"],
        input_path=small_pool_pattern,
        output_path=str(root),
    )
    again = run_recipe(back, overwrite=True)
    assert [s["computed"] for s in again.stages] == [0, 0, 0]
    assert all(s.get("barrier", {"reused": True})["reused"] for s in again.stages)
    assert again.stats["written"] == full_run.stats["written"]


def test_pixels_are_fetched_by_range_in_a_later_stage(ray_session, small_pool_pattern, tmp_path):
    """clip_embed after a barrier reads the image bytes again from the source tars by byte range;
    its scores equal those of the same model run in the first stage on the same rows."""
    first = run_in_process("clip_filter", small_pool_pattern, tmp_path / "first")
    later = run_in_process(
        "basic",
        small_pool_pattern,
        tmp_path / "later",
        [
            "steps.2.name=clip_fraction",
            "steps.2.params.score_column=lang_score",
            "steps.2.params.fraction=1.0",
            "steps.2.resources.num_cpus=0.25",
            "steps.3.name=clip_embed",
            "steps.3.params.model=curate-tiny-clip",
            "steps.3.params.pretrained=curate",
            "steps.3.resources.num_cpus=0.75",
        ],
    )
    assert later.stages[1]["computed"] == 4

    def scores(run) -> dict[str, float]:
        with connect(run.run_dir.root) as con:
            return dict(con.execute("SELECT uid, clip_score FROM samples WHERE clip_score IS NOT NULL").fetchall())

    a, b = scores(first), scores(later)
    assert len(a) > 800 and a.keys() == b.keys()
    assert np.allclose([a[u] for u in a], [b[u] for u in a], atol=2e-3)


@pytest.fixture(scope="module")
def three_stage_reference(ray_session, small_pool_pattern, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("three_ref")
    result = run_in_process("basic", small_pool_pattern, out, THREE_STAGES)
    assert [s["computed"] for s in result.stages] == [4, 4, 4]
    return out


def test_three_stage_reference_writes_images_fetched_by_range(three_stage_reference, small_pool):
    """The last stage carried no pixels: every written image is the pool's own bytes."""
    import tarfile

    from curate.readers.base import list_shards, read_shard

    source = {}
    for ref in list_shards(str(small_pool)):
        table = read_shard(ref)
        source.update(zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True))
    checked = 0
    for tar_path in sorted((three_stage_reference / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                uid = json.loads(data)["uid"]
                assert members[name[: -len("json")] + "jpg"] == source[uid]
                checked += 1
    sizes = json.loads((three_stage_reference / "shards" / "sizes.json").read_text())
    assert checked == sum(sizes.values()) > 300


# Where each kill lands, and the least that the resumed run must find already done: shards
# reused per stage (the kill happened after them) and whether the first barrier's state was saved.
CRASHES = {
    "part_tallied:2": ((0, 0, 0), False),  # the driver, counting stage 0's parts
    "stage_written:2": ((1, 0, 0), False),  # a worker of stage 0, after one shard's stage output
    "barrier_saved:1": ((4, 0, 0), True),  # the driver, once the first barrier's state is saved
    "stage_written:6": ((4, 1, 0), True),  # a worker of stage 1 (4 stage-0 shards were written before)
    "shard_files_written:2": ((4, 4, 0), True),  # a task of the last stage, final files half written
    "shard_renamed:3": ((4, 4, 0), True),  # a task of the last stage, renamed but not yet marked done
}


@pytest.mark.parametrize("crash_at", list(CRASHES))
def test_sigkill_in_a_three_stage_run_then_resume(
    crash_at, three_stage_reference, small_pool_pattern, ray_session, tmp_path
):
    out = tmp_path / "run"
    killed = run_cli("basic", small_pool_pattern, out, ray_session, THREE_STAGES, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stdout
    resumed = run_cli("basic", small_pool_pattern, out, ray_session, THREE_STAGES)
    assert resumed.returncode == 0, resumed.stdout
    got, want = snapshot(out), snapshot(three_stage_reference)
    assert got["stray"] == [] and got["tmp_left"] == []
    assert got == want
    markers = sorted(p.name for p in (out / "_cache").glob("stage*/_done/*.json"))
    assert len(markers) == 12  # every stage of every shard, each computed once and kept
    stages = json.loads((out / "stages.json").read_text())
    least, barrier_saved = CRASHES[crash_at]
    assert all(s["reused"] >= n for s, n in zip(stages, least, strict=True)), stages
    assert all(s["reused"] + s["computed"] == 4 for s in stages)
    if barrier_saved:
        assert stages[0]["barrier"]["reused"], stages


def _processes_tagged(tag: str) -> list[int]:
    """Live processes whose environment holds ``CURATE_TEST_TAG=tag`` (a run's driver and workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"CURATE_TEST_TAG={tag}".encode() in env:
                found.append(int(proc.name))
    return found


def test_without_a_cluster_the_run_writes_what_ray_writes(three_stage_reference, small_pool_pattern, tmp_path):
    """The same command naming no cluster runs every stage in local processes (pixels read, global
    decisions, images fetched back by range for the sink) and writes the reference run's output."""
    out = tmp_path / "run"
    done = run_cli("basic", small_pool_pattern, out, None, THREE_STAGES)
    assert done.returncode == 0, done.stdout[-3000:]
    assert snapshot(out) == snapshot(three_stage_reference)


@pytest.mark.parametrize("kill", ["in_a_worker", "the_driver_from_outside"])
def test_sigkill_without_a_cluster_leaves_no_worker_and_resumes_exactly(
    kill, three_stage_reference, small_pool_pattern, tmp_path
):
    """Killed in a local worker process (which kills the driver, then itself), or the driver killed from
    outside while a worker is busy (held at a crash point for good: it would never end by itself), the
    run leaves no process of it behind to write to its folder, and the resumed run ends as an
    uninterrupted one."""
    import time
    import uuid

    from run_helpers import HANG_GUARD_S, finish, start_cli

    out, tag = tmp_path / "run", uuid.uuid4().hex
    crash_at = "stage_written:2" if kill == "in_a_worker" else "stage_written:2:hold"
    proc = start_cli(
        "basic", small_pool_pattern, out, None, THREE_STAGES, crash_at=crash_at, env_extra={"CURATE_TEST_TAG": tag}
    )
    deadline = time.monotonic() + HANG_GUARD_S  # a guard against a hang, not a condition of the test
    try:
        if kill == "the_driver_from_outside":
            held = out / "_tmp" / "crash" / "held-stage_written"
            while not held.exists():
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the run never reached its held shard"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG_GUARD_S)
        # The held worker is gone only if it died with the driver; a guard, as the kernel kills it at once.
        gone_by = time.monotonic() + 120
        while _processes_tagged(tag):
            assert time.monotonic() < gone_by, f"processes of the killed run still alive: {_processes_tagged(tag)}"
            time.sleep(0.1)
        log = finish(proc)  # its output: only once no process of it holds the pipe
    finally:
        proc.kill()
        for pid in _processes_tagged(tag):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    resumed = run_cli("basic", small_pool_pattern, out, None, THREE_STAGES)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    got = snapshot(out)
    assert got["stray"] == [] and got["tmp_left"] == []
    assert got == snapshot(three_stage_reference)


def test_stage_outputs_hold_no_image_bytes(three_stage_reference):
    for path in (three_stage_reference / "_cache").glob("stage*/*.parquet"):
        names = pq.read_schema(path).names
        assert "image" not in names
        if path.parent.name.startswith("stage0"):
            assert {"image_offset", "image_size", "uid"} <= set(names)
        else:
            assert "uid" not in names and "caption" not in names  # only what that stage wrote


def test_a_pool_rewritten_in_place_is_not_taken_from_the_cache(ray_session, small_pool, tmp_path):
    """The cache knows a shard by path, size and modification time, not by name alone."""
    import os
    import shutil

    pool = tmp_path / "pool"
    pool.mkdir()
    for ext in (".tar", ".parquet"):
        shutil.copy(small_pool / f"00000000{ext}", pool / f"00000000{ext}")
    pattern = str(pool / "00000000.tar")
    first = run_in_process("basic", pattern, tmp_path / "run")
    assert [s["computed"] for s in first.stages] == [1]
    with connect(first.run_dir.root) as con:
        before = {u for (u,) in con.execute("SELECT uid FROM samples").fetchall()}
    for ext in (".tar", ".parquet"):  # another shard's samples under the same names
        shutil.copy(small_pool / f"00000001{ext}", pool / f"00000000{ext}")
        os.utime(pool / f"00000000{ext}", ns=(1, 1))
    from curate.config import load_recipe
    from curate.rundir import RunFolderError
    from curate.runner import run_recipe

    recipe = load_recipe("basic", ["ray.progress_bars=false"], input_path=pattern, output_path=str(tmp_path / "run"))
    with pytest.raises(RunFolderError, match="different recipe or input"):
        run_recipe(recipe)
    second = run_recipe(recipe, overwrite=True)
    assert [(s["computed"], s["reused"]) for s in second.stages] == [(1, 0)]
    with connect(second.run_dir.root) as con:
        uids = {u for (u,) in con.execute("SELECT uid FROM samples").fetchall()}
    assert len(uids) == len(before) == 300 and not uids & before


def test_the_report_shows_the_semdedup_removals_and_the_length_buckets(full_run):
    from report_browser import check_report

    shown = check_report(
        full_run.run_dir.root,
        "report-curate-full.png",
        sections={"funnel", "scores", "clusters", "buckets", "galleries"},
        figures={"fig-clip-score", "fig-semdedup-eps", "fig-semdedup-clusters", "fig-bucket-chunks"}
        | {"fig-bucket-tokens"},
        galleries={"gallery-kept", "gallery-semdedup-near-duplicate"}
        | {"gallery-clip-fraction-clip-score-below-fraction"},
    )
    assert shown["load_ms"] < 5000
    html = (full_run.run_dir.root / "report.html").read_text()
    with connect(full_run.run_dir.root) as con:
        per_bucket = con.execute(
            "SELECT c.k, count(*) FROM (SELECT unnest(chunks) AS c FROM samples WHERE keep) GROUP BY ALL ORDER BY 1"
        ).fetchall()
    for k, n in per_bucket:  # the bucket table holds the catalog's own counts
        assert f"<td>2^{k} ({2**k})</td><td>{n:,}</td>" in html
    # The CLIP histogram draws the pool-wide threshold the barrier computed, labelled with its value.
    threshold = json.loads((full_run.run_dir.root / "global_state.json").read_text())["clip_fraction"]["threshold"]
    assert f"clip_fraction: top 90% ({threshold:.3f})" in html


@pytest.fixture
def two_nodes(s3_env, tmp_path):
    """A Ray cluster of a head node without CPUs and one worker node, on 127.0.0.1; its nodes reach
    the tests' S3 server (the environment names it)."""
    from ray_nodes import LocalCluster

    cluster = LocalCluster(tmp_path)
    try:
        cluster.add_worker("first", num_cpus=2)
        yield cluster
    finally:
        cluster.close()


def test_a_worker_node_dies_mid_run_and_the_run_ends_as_an_uninterrupted_one(
    two_nodes, three_stage_reference, small_pool_pattern, tmp_path
):
    """The three-stage run on a real two-node cluster, its run folder on the S3 server, so that no
    filesystem is shared between the driver and the worker nodes. Its only worker node is killed
    (every process at once) while a task of stage 0 holds after committing one shard, so the kill
    lands mid-run by construction; a replacement node joins, and the run's output equals an
    uninterrupted run's on a local path."""
    import time

    from run_helpers import finish, start_cli
    from s3_server import new_bucket

    from curate.rundir import RunDir

    out = new_bucket() + "/run"
    proc = start_cli("basic", small_pool_pattern, out, two_nodes.address, THREE_STAGES, crash_at="stage_written:2:hold")
    held = RunDir(out).local_tmp / "crash" / "held-stage_written"
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a condition of the test
        while not held.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the run never reached its held shard"
            time.sleep(0.05)
        two_nodes.kill(two_nodes.nodes[-1])  # the only worker node: the held task was there
        assert not RunDir(out).storage.exists("stats.json")
        two_nodes.add_worker("replacement", num_cpus=2)
        log = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, log
    got, want = snapshot(out), snapshot(three_stage_reference)
    assert got["stray"] == [] and got["tmp_left"] == []
    assert got == want
