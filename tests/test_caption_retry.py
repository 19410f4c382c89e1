"""A captioning run against a model server that fails some requests: killed and resumed, it asks
the model again for no sample it had finished; re-run, it asks again for exactly the rows the
server could not answer, and nothing else, and recomputes what depends on them (the global step
after captioning), ending where a run against a healthy server ends."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import pool_pattern
from model_servers import flaky_proxy, transformers_serve
from run_helpers import HANG_GUARD_S, run_cli, stored_stage_tables, write_recipe

from captioners.backends.transformers_backend import TINY_LLAVA_DIR
from curate.synth import make_pool
from schemas.tables import STATUS_CAPTION_UNAVAILABLE


def _recipe(folder: Path, base_url: str) -> Path:
    """basic, dense captions through the openai backend (alt-text the only hint), then a global
    step over what captioning produced: the top 75% of the kept rows by caption length."""
    recipe = {
        "name": "caption_retry",
        "input": {"format": "auto"},
        "ray": {"read_concurrency": 1, "read_num_cpus": 0.1},
        "steps": [
            {"name": "image_check", "resources": {"num_cpus": 0.05}},
            {"name": "basic", "resources": {"num_cpus": 0.05}},
            {
                "name": "dense_caption",
                "params": {
                    "backend": {
                        "kind": "openai",
                        "base_url": base_url,
                        "model": str(TINY_LLAVA_DIR),
                        "max_retries": 1,
                        "timeout_s": HANG_GUARD_S,  # a hang guard: a busy machine answers slowly
                        "concurrency": 2,
                        # this test counts every request: sending is never cut short
                        "give_up_after": 1000,
                    },
                    "hints": ["alt_text"],
                    "max_tokens": 120,
                },
                "resources": {"batch_size": 6, "num_cpus": 0.1},
            },
            {
                "name": "clip_fraction",
                "rows": "kept",
                "params": {"score_column": "dense_completion_tokens", "fraction": 0.75},
                "resources": {"num_cpus": 0.05},
            },
        ],
        "output": {"caption_field": "dense_caption"},
    }
    return write_recipe(folder, recipe)


def _finished_rows(run: Path) -> int:
    """Rows captioned and safely stored when the run died: in committed stage outputs or in parts."""
    tables = stored_stage_tables(run)
    return sum(pc.sum(pc.is_valid(t["dense_answer"])).as_py() or 0 for t in tables if "dense_answer" in t.column_names)


def _outcome(run: Path) -> list[dict]:
    tables = [
        pq.read_table(p, columns=["uid", "status", "keep", "drop_reason", "dense_caption"])
        for p in sorted((run / "shards").glob("*.parquet"))
    ]
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture(scope="module")
def server():
    with transformers_serve(TINY_LLAVA_DIR) as url, flaky_proxy(url) as proxied:
        yield proxied


def test_a_killed_and_failing_captioning_run_retries_only_what_it_must(ray_session, tmp_path, server):
    url, proxy = server
    pool = tmp_path / "pool"
    # In this pool every shard has kept rows the flaky server answers and rows it refuses (2+2, 1+3,
    # 6+1), so whichever shard is stored first at a kill, some row is finished and some left to retry.
    make_pool(str(pool), samples=24, shard_size=8, seed=31, text_rate=0.3)
    recipe = str(_recipe(tmp_path, url))
    out = tmp_path / "run"

    # 1. Killed once a worker stored the first shard's rows as a part: the one captioner works through
    # the shards in turn, so a second is in flight then and a third not started.
    killed = run_cli(recipe, pool_pattern(pool), out, ray_session, crash_at="part_written:1")
    assert killed.returncode != 0
    proxy.wait_quiet()  # the killed run's workers are gone
    finished = _finished_rows(out)
    assert finished > 0
    asked_before_kill = sum(proxy.forwarded.values())
    failed_keys = set(proxy.refused)
    assert all(n == 2 for n in proxy.refused.values())  # tried once and retried once by the client
    proxy.reset_counts()

    # 2. Resumed, the server still failing a third of the images: no finished row is asked again.
    resumed = run_cli(recipe, pool_pattern(pool), out, ray_session)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    rows = _outcome(out)
    captioned = sum(r["dense_caption"] is not None for r in rows)
    unavailable = [r for r in rows if r["status"] == STATUS_CAPTION_UNAVAILABLE]
    assert sum(proxy.forwarded.values()) == captioned - finished > 0
    failed_keys |= set(proxy.refused)
    assert len(unavailable) == len(failed_keys) > 0
    assert all(n == 2 for n in proxy.refused.values())
    assert all(not r["keep"] for r in unavailable)
    print(f"asked before the kill {asked_before_kill}, finished {finished}; resumed: asked {captioned - finished}")

    # 3. The server recovered: the same command asks again for the rows it could not answer, and
    # for nothing else; killed in the middle of that and resumed, it still asks for each only once.
    proxy.flaky = False
    proxy.reset_counts()
    killed = run_cli(recipe, pool_pattern(pool), out, ray_session, crash_at="part_written:1")
    assert killed.returncode != 0
    proxy.wait_quiet()
    finished = _finished_rows(out)
    asked = dict(proxy.forwarded)
    proxy.reset_counts()
    retried = run_cli(recipe, pool_pattern(pool), out, ray_session)
    assert retried.returncode == 0, retried.stdout[-3000:]
    rows = _outcome(out)
    assert sum(proxy.forwarded.values()) == sum(r["dense_caption"] is not None for r in rows) - finished
    assert set(asked) | set(proxy.forwarded) == failed_keys and all(n == 1 for n in proxy.forwarded.values())
    stages = json.loads((out / "stages.json").read_text())
    assert 0 < stages[0]["retried_rows"] <= len(unavailable)
    assert stages[0]["barrier"]["reused"] is False  # its pool gained the rows captioned now
    assert stages[1]["computed"] == 3  # every shard's decisions follow the new state
    stats = json.loads((out / "stats.json").read_text())
    assert STATUS_CAPTION_UNAVAILABLE not in stats["status"]

    # 4. Where a run against a healthy server ends; and a further re-run has nothing to do.
    proxy.reset_counts()
    clean = run_cli(recipe, pool_pattern(pool), tmp_path / "clean", ray_session)
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert _outcome(out) == _outcome(tmp_path / "clean")
    assert json.loads((out / "shards" / "sizes.json").read_text()) == json.loads(
        (tmp_path / "clean" / "shards" / "sizes.json").read_text()
    )
    assert not list(out.glob("_cache/*/_parts/*"))
    proxy.reset_counts()
    again = run_cli(recipe, pool_pattern(pool), out, ray_session)
    assert again.returncode == 0 and not proxy.forwarded and not proxy.refused


def test_without_a_cluster_a_rerun_asks_again_only_for_what_the_server_could_not_answer(tmp_path, server):
    """The same in local processes (no cluster named): a stage's shard task computes only the rows
    to retry and puts them back with the rows its previous output keeps."""
    url, proxy = server
    proxy.flaky = True
    proxy.reset_counts()
    pool = tmp_path / "pool"
    make_pool(str(pool), samples=32, shard_size=16, seed=37, text_rate=0.3)
    recipe = str(_recipe(tmp_path, url))
    out = tmp_path / "run"
    first = run_cli(recipe, pool_pattern(pool), out, None)
    assert first.returncode == 0, first.stdout[-3000:]
    failed_keys = set(proxy.refused)
    unavailable = [r for r in _outcome(out) if r["status"] == STATUS_CAPTION_UNAVAILABLE]
    assert len(unavailable) == len(failed_keys) > 0

    proxy.flaky = False
    proxy.reset_counts()
    retried = run_cli(recipe, pool_pattern(pool), out, None)
    assert retried.returncode == 0, retried.stdout[-3000:]
    assert set(proxy.forwarded) == failed_keys and all(n == 1 for n in proxy.forwarded.values())
    stages = json.loads((out / "stages.json").read_text())
    assert stages[0]["retried_rows"] == len(unavailable)
    clean = run_cli(recipe, pool_pattern(pool), tmp_path / "clean", None)
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert _outcome(out) == _outcome(tmp_path / "clean")
