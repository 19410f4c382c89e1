"""Graph-based captions end to end: the ``gbc_recaption`` recipe on a shapes pool with the committed
tiny GBC model, every written graph valid and scored against the ground truth; malformed answers from
a model giving smaller valid graphs and recorded reasons; a killed GBC run resumed without asking a
finished image's queries again (counted at a real server)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import pool_pattern
from model_servers import flaky_proxy, rewriting_proxy, transformers_serve
from run_helpers import HANG_GUARD_S, run_cli, stored_stage_tables, write_recipe

import captioners.gbc  # noqa: F401 - registers the step
from captioners.backends.transformers_backend import TINY_LLAVA_GBC_DIR
from captioners.gbc import decode_view
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import FaultRates, make_pool
from curate.synth.gbc_truth import image_answer, score_graph, summarise
from curate.synth.scoring import pool_metas
from schemas.gbc import Graph
from schemas.gbc_validate import validate
from schemas.tables import STATUS_FAILED_CAPTION

# Bars on this unseen seed's kept rows, below what was measured (2026-12-01: entities P 0.939 R 0.585,
# compositions P 0.900 R 0.643; relations 2 of 2 right but recall 0.056: the tiny model's image query
# rarely names two distinct phrases, see its card), with room for another CPU's float rounding.
ENTITY_PRECISION = 0.8
ENTITY_RECALL = 0.45
COMPOSITION_PRECISION = 0.75
COMPOSITION_RECALL = 0.5
# With the image query answered from the ground truth (the rest as built), 24 images: measured relations
# P 0.818 R 0.474, entities P 1.000 R 0.943, compositions P 0.923 R 0.923.
ORACLE_RELATION_PRECISION = 0.6
ORACLE_RELATION_RECALL = 0.3
ORACLE_ENTITY_RECALL = 0.8


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gbc") / "pool"
    make_pool(str(folder), samples=64, shard_size=32, seed=14, text_rate=0.3, repeat_rate=0.5)
    return folder


@pytest.fixture(scope="module")
def recaptioned(ray_session, pool, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gbc") / "run"
    done = run_cli("gbc_recaption", pool_pattern(pool), out, ray_session)
    assert done.returncode == 0, done.stdout[-3000:]
    return out


def _sidecars(run: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((run / "shards").glob("*.parquet"))])


def test_the_recipe_writes_valid_graphs_that_match_the_truth(recaptioned, pool):
    rows = _sidecars(recaptioned)
    assert rows.num_rows == 64  # nothing lost: every input row is in the sidecars, kept or not
    kept = rows.filter(rows["keep"])
    assert kept.num_rows > 30
    # only the rows selection kept were captioned: the others were dropped before, by another step
    for r in rows.select(["gbc_calls", "drop_reason"]).to_pylist():
        if r["gbc_calls"] is None:
            assert r["drop_reason"] and not r["drop_reason"].startswith("gbc_caption")
        else:
            assert r["gbc_calls"] >= 1 and (r["drop_reason"] or "gbc_caption").startswith("gbc_caption")
    metas = pool_metas(pool)
    counts = []
    samples = 0
    for tar in sorted((recaptioned / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name, data in members.items():
            if not name.endswith(".json"):
                continue
            sample = json.loads(data)
            graph = Graph.from_json(sample["gbc_graph"])  # an object in the sample's json, GBC10M's shape
            assert validate(graph) == []
            assert members[name[: -len(".json")] + ".txt"].decode() == sample["gbc_text"] != ""
            counts.append(score_graph(sample["gbc_graph"], metas[sample["uid"]]))
            samples += 1
    assert samples == kept.num_rows
    scores = summarise(counts)
    print(json.dumps(scores))
    assert scores["entity_precision"] >= ENTITY_PRECISION and scores["entity_recall"] >= ENTITY_RECALL
    assert scores["groups"] > 0 and scores["composition_precision"] >= COMPOSITION_PRECISION
    assert scores["composition_recall"] >= COMPOSITION_RECALL
    # failed graphs keep their reason; a graph that failed the validator is never written
    for r in rows.filter(pc.equal(rows["status"], STATUS_FAILED_CAPTION)).to_pylist():
        assert r["error_message"] and r["output_key"] is None


def test_graphs_query_with_duckdb(recaptioned):
    query = (
        "select count(*), sum(gbc_calls), "
        "sum(json_array_length(json_extract(gbc_graph, '$.vertices'))) = sum(gbc_vertices) from kept"
    )
    out = subprocess.run(
        [sys.executable, "-m", "curate.cli", "query", str(recaptioned), query],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "true" in out.stdout.lower(), out.stdout


class TruthForImageQueries:
    """The real backend, except that an image query is answered from the ground truth of its image
    (found by its pixels): what the graphs get when the first query is right."""

    def __init__(self, backend, answers: dict[bytes, str]):
        self.backend, self.answers = backend, answers
        self.model_name, self.revision = backend.model_name, backend.revision

    def generate(self, requests):
        from captioners.backends import Completion

        answers = self.backend.generate(requests)
        for k, r in enumerate(requests):
            text = r.messages[0]["content"][1]["text"]
            if text.startswith("Describe this image"):
                truth = self.answers[hashlib.sha1(r.images[0].tobytes()).digest()]
                answers[k] = Completion(truth, "stop", answers[k].prompt_tokens, len(truth.split()))
        return answers


def test_the_report_shows_new_captions_beside_the_old_and_graphs_over_images(recaptioned):
    from report_browser import check_report

    shown = check_report(
        recaptioned,
        "report-gbc.png",
        sections={"funnel", "scores", "captions", "gbc", "galleries"},
        figures={"fig-caption-lengths", "fig-gbc-caption-labels", "fig-clip-score"},
        galleries={"gallery-captions-gbc-caption", "gallery-gbc-caption", "gallery-kept"},
    )
    assert shown["galleries"]["gallery-gbc-caption"] == 4  # four graphs drawn over their images
    html = (recaptioned / "report.html").read_text()
    rows = _sidecars(recaptioned).filter(pc.is_valid(_sidecars(recaptioned)["gbc_text"]))
    first = sorted(rows["uid"].to_pylist())[0]  # the side-by-side gallery starts at the lowest uid
    assert f'data-uid="{first}"' in html


def test_with_a_right_image_query_relations_match_the_truth(pool):
    from captioners.gbc import GbcCaptioner, GbcParams

    metas = pool_metas(pool)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(pool))])
    table = table.filter(pc.is_in(table["uid"], pa.array([u for u, m in metas.items() if m["gt"]["fault"] == "none"])))
    table = table.slice(0, 24)
    answers = {}
    for uid, data in zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True):
        image = decode_view(data, 512)
        answers[hashlib.sha1(image.tobytes()).digest()] = image_answer(metas[uid])
    params = GbcParams(
        backend={"kind": "transformers", "model": "curate-tiny-llava-gbc", "device": "cpu"},
        detector={"device": "cpu"},
        selection={"min_score": 0.1, "min_area_px": 300},
        hints=["alt_text"],
    )
    step = GbcCaptioner(params)
    step.backend = TruthForImageQueries(step.backend, answers)
    out = step(table).to_pylist()
    counts = [score_graph(json.loads(r["gbc_graph"]), metas[r["uid"]]) for r in out if r["gbc_graph"]]
    scores = summarise(counts)
    print(json.dumps(scores))
    assert len(counts) == 24 and scores["pairs"] > 10
    assert scores["relation_precision"] >= ORACLE_RELATION_PRECISION
    assert scores["relation_recall"] >= ORACLE_RELATION_RECALL
    assert scores["entity_recall"] >= ORACLE_ENTITY_RECALL


# -- a model that answers badly -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gbc_server():
    with transformers_serve(TINY_LLAVA_GBC_DIR) as url:
        yield url


def _openai(url: str) -> dict:
    return {
        "kind": "openai",
        "base_url": url,
        "model": str(TINY_LLAVA_GBC_DIR),
        "max_retries": 1,
        "timeout_s": HANG_GUARD_S,  # a hang guard: a busy machine answers slowly
        "concurrency": 4,
        "give_up_after": 1000,
    }


def image_key(image) -> str:
    """The key ``rewriting_proxy`` gives a request showing ``image`` (the openai backend's data URL)."""
    from captioners.backends.openai_backend import to_openai_messages

    message = to_openai_messages([{"role": "user", "content": [{"type": "image", "image": image}]}])[0]
    return hashlib.sha1(message["content"][0]["image_url"]["url"].encode()).hexdigest()


class BadModel:
    """Image queries answered from the truth (so that elements are found and relations asked), but
    garbage for a third of the images and the last bracket cut in the others; entities alternately not
    there and with a part no caption names; relations and compositions off the form."""

    def __init__(self, truths: dict[str, str]):
        self.truths = truths

    def __call__(self, prompt: str, key: str, ask) -> str:
        if prompt.startswith("Describe this image"):
            answer = self.truths[key]
            if int(hashlib.sha1(answer.encode()).hexdigest(), 16) % 3 == 0:
                return "<unk> ]] [[ lorem ipsum"
            return answer[: answer.rindex("]")]  # "...[sky][single": unbalanced
        if prompt.startswith("Look at the"):
            answer = ask()
            if int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % 2:
                return "Object Present: No"
            return answer.replace("Prominent Features: No", "Prominent Features: Yes\n- spoiler: [single]")
        if prompt.startswith("Name at most"):
            return "I cannot tell how they relate."
        return "The shapes are arranged nicely."


def test_malformed_answers_give_smaller_valid_graphs_and_reasons(gbc_server, pool):
    from curate.synth.gbc_truth import image_answer

    metas = pool_metas(pool)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(pool))])
    clean = [u for u, m in metas.items() if m["gt"]["fault"] == "none"]
    table = table.filter(pc.is_in(table["uid"], pa.array(clean))).slice(0, 16)
    truths = {}
    for uid, data in zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True):
        image = decode_view(data, 512)
        truths[image_key(image)] = image_answer(metas[uid])
    with rewriting_proxy(gbc_server, BadModel(truths)) as url:
        step = StepRunner(
            "gbc_caption",
            "gbc_caption",
            {
                "backend": _openai(url),
                "detector": {"device": "cpu"},
                "selection": {"min_score": 0.1, "min_area_px": 300},
                "hints": ["alt_text"],
            },
        )
        out = step(table).to_pylist()
    assert len(out) == 16
    garbage = [r for r in out if r["status"] == STATUS_FAILED_CAPTION]
    assert garbage and all(r["error_message"].startswith("image query: nothing usable") for r in garbage)
    assert all(r["gbc_calls"] == 1 and r["gbc_graph"] is None for r in garbage)  # nothing more asked for them
    built = [r for r in out if r["status"] == "success"]
    assert built
    problems = "\n".join(p for r in built for p in r["gbc_problems"])
    assert "unbalanced brackets" in problems
    assert "'spoiler': not in any caption" in problems
    assert "no relation lines" in problems
    for r in built:
        graph = Graph.from_json(json.loads(r["gbc_graph"]))
        assert validate(graph) == []
        labels = [v.label for v in graph.vertices]
        assert "relation" not in labels  # no relation answer was usable
        for v in graph.vertices:
            if v.label == "composition":
                assert {d.label for d in v.descs} == {"hardcode"}  # the hints, not the bad answer
                assert "no Composition section" in problems


# -- killed and resumed -------------------------------------------------------------------------------


def _recipe(folder: Path, url: str) -> Path:
    recipe = {
        "name": "gbc_resume",
        "input": {"format": "auto"},
        "ray": {"read_concurrency": 1, "read_num_cpus": 0.1},
        "steps": [
            {"name": "image_check", "resources": {"num_cpus": 0.05}},
            {"name": "basic", "resources": {"num_cpus": 0.05}},
            {
                "name": "gbc_caption",
                "params": {
                    "backend": _openai(url),
                    "detector": {"device": "cpu"},
                    "selection": {"min_score": 0.1, "min_area_px": 300},
                    "hints": ["alt_text"],
                },
                "resources": {"batch_size": 4, "num_cpus": 0.2},
            },
        ],
        "output": {"caption_field": "gbc_text"},
    }
    return write_recipe(folder, recipe)


def _calls_stored(run: Path) -> int:
    """MLLM requests of the rows stored when the run died: committed stage outputs and parts."""
    tables = stored_stage_tables(run)
    return sum(pc.sum(t["gbc_calls"]).as_py() or 0 for t in tables if "gbc_calls" in t.column_names)


def _graphs(run: Path) -> list[tuple]:
    rows = _sidecars(run).select(["uid", "status", "keep", "gbc_graph", "gbc_text", "gbc_calls"]).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


def test_a_killed_gbc_run_resumes_without_asking_again(ray_session, gbc_server, tmp_path):
    pool = tmp_path / "pool"
    make_pool(str(pool), samples=12, shard_size=4, seed=16, faults=FaultRates.none(), repeat_rate=0.5)
    with flaky_proxy(gbc_server) as (url, proxy):
        proxy.flaky = False  # a healthy server: every request is forwarded and counted
        recipe = str(_recipe(tmp_path, url))
        out = tmp_path / "run"
        killed = run_cli(recipe, pool_pattern(pool), out, ray_session, crash_at="part_written:2")
        assert killed.returncode != 0
        proxy.wait_quiet()
        stored = _calls_stored(out)
        assert stored > 0
        proxy.reset_counts()
        resumed = run_cli(recipe, pool_pattern(pool), out, ray_session)
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        total = pc.sum(_sidecars(out)["gbc_calls"]).as_py()
        asked = sum(proxy.forwarded.values())
        print(f"requests stored at the kill {stored}; asked on resume {asked}; all {total}")
        assert asked == total - stored > 0  # every query of a finished image was asked once, before the kill
        proxy.reset_counts()
        clean = run_cli(recipe, pool_pattern(pool), tmp_path / "clean", ray_session)
        assert clean.returncode == 0, clean.stdout[-3000:]
        assert sum(proxy.forwarded.values()) == total
    assert _graphs(out) == _graphs(tmp_path / "clean")


# -- params and caption scores ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prompts": {"scene": "x"}}, "prompts: unknown query kind(s) ['scene']"),
        ({"prompts": {"entity": "dense_caption"}}, "must contain {entity}"),
        ({"text": {"clip_thresholds": {"detail-entity": 0.2}}}, "text.clip_thresholds: captions have no CLIP scores"),
        ({"text": {"format": "yaml"}}, "format"),
        ({"detector": {"weights": "yolov8s-worldv2.pt"}}, "this step never downloads"),
        ({"selection": {"min_score": 2}}, "min_score"),
    ],
)
def test_bad_params_fail_naming_the_field(params, message):
    from captioners.gbc import GbcParams

    with pytest.raises(ValueError, match=re.escape(message)):
        GbcParams(**params)


def test_closed_set_detector_weights_fail_naming_the_field():
    with pytest.raises(ValueError, match=r"detector.weights: .*open-vocabulary"):
        StepRunner("gbc_caption", "gbc_caption", {"detector": {"weights": "curate-tiny-yolo", "device": "cpu"}})


def test_caption_scores_rank_the_right_caption_first(pool):
    """The tiny CLIP scores each node caption against its region: a shape's crop scores its own colour
    and kind above another's."""
    from captioners.gbc_clip import score_captions
    from captioners.gbc_graph import GraphBuilder
    from filters.clip_embed import ClipEmbedder, ClipEmbedParams, decode_image

    clip = ClipEmbedder(ClipEmbedParams(model="curate-tiny-clip", pretrained="curate", device="cpu"))
    metas = pool_metas(pool)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(pool))])
    table = table.filter(pc.equal(table["status"], "success"))
    wins = total = 0
    for uid, data in zip(table["uid"].to_pylist()[:30], table["image"].to_pylist()[:30], strict=True):
        if metas[uid]["gt"]["fault"] == "corrupt_image":
            continue
        meta, image = metas[uid], decode_image(data, 512)
        b = GraphBuilder(max_vertices=20)
        for k, shape in enumerate(meta["gt"]["shapes"]):
            box = [v / s for v, s in zip(shape["bbox"], (meta["width"], meta["height"]) * 2, strict=True)]
            vid = b.add_entity("", f"shape {k}", f"shape {k}", tuple(box), 1.0)
            if vid is None:
                continue
            other = "green star" if shape["color"] != "green" else "red circle"
            b.describe(vid, f"a {shape['color']} {shape['label']}", "detail")
            b.describe(vid, f"a {other}", "detail")
        score_captions(clip, "curate-tiny-clip", [(image, b)])
        for node in b.nodes.values():
            if node.label == "entity":
                right, wrong = (d.clip_scores.scores["curate-tiny-clip"] for d in node.descs)
                assert not node.descs[0].clip_scores.truncation
                wins += right > wrong
                total += 1
    assert total > 30 and wins / total >= 0.8, (wins, total)
