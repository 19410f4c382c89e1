"""Dense captions: hints and prompts, answers judged, the transformers backend on the committed tiny
LLaVA, the openai backend against a real ``transformers serve`` and against broken servers, and the
quality of the captions against the ground truth, with and without the experts' hints."""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa
import pytest
from model_servers import broken_server, transformers_serve

import captioners.dense  # noqa: F401 - registers the step before curate.registry lists it
import captioners.detector  # noqa: F401
import captioners.ocr  # noqa: F401
import captioners.tags  # noqa: F401
from captioners.backends import ChatRequest, Completion
from captioners.backends.openai_backend import OpenAIBackend, OpenAIParams, to_openai_messages
from captioners.backends.transformers_backend import TINY_LLAVA_DIR, TINY_LLAVA_NAME
from captioners.dense import judge
from captioners.hints import Hints, PromptTemplate, parse_answer
from curate.readers.base import list_shards, read_shard
from curate.stepkit import StepInputError
from curate.steps import StepRunner
from curate.synth import FaultRates, make_pool
from curate.synth.describe import named_shapes, true_shapes
from curate.synth.scoring import pool_metas
from schemas.tables import STATUS_CAPTION_UNAVAILABLE, STATUS_FAILED_CAPTION

CPU = {"device": "cpu"}
EXPERTS = {
    "detect": CPU,
    "ocr": {"latin_only": True, "threads": 1, "det_limit_side_len": 512},
    "tags": {**CPU, "model": "curate-tiny-clip", "pretrained": "curate", "vocabulary": "shapes_tags.txt", "top_k": 3},
}


# -- hints, prompts, answers --------------------------------------------------------------------------


def test_hint_lines_in_densefusion_style():
    hints = Hints(
        boxes=[[0.353, 0.0961, 0.892, 0.991]],
        labels=["circle"],
        texts=["COFFEE"],
        tags=["red", "circle"],
        alt_text="  a red\ncircle ",
    )
    assert hints.lines() == [
        "Detection Information: circle: [0.35, 0.10, 0.89, 0.99]",
        'Text Information: "COFFEE"',
        "Image Tags: red, circle",
        "World Knowledge: a red circle",
    ]
    assert hints.lines(("tags",)) == ["Image Tags: red, circle"]
    assert Hints(labels=[], texts=None, alt_text=" ").lines() == []


def test_prompt_template_versions_and_errors(tmp_path):
    builtin = PromptTemplate.load("dense_caption")
    assert re.fullmatch(r"dense_caption@[0-9a-f]{12}", builtin.version)
    assert "World Knowledge: x" in builtin.render(["World Knowledge: x"])
    assert "No hints." in builtin.render([])
    other = tmp_path / "mine.txt"
    other.write_text("Look. {hints} Answer.")
    assert PromptTemplate.load(str(other)).version != builtin.version
    with pytest.raises(ValueError, match="prompt: value 'nope' is neither a file nor a built-in prompt"):
        PromptTemplate.load("nope")
    other.write_text("no slot")
    with pytest.raises(ValueError, match=r"must contain \{hints\} exactly once"):
        PromptTemplate.load(str(other))


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Completion("Description: a red circle.\nCaption: A red circle.", "stop"), None),
        (Completion("   ", "stop"), "empty answer"),
        (Completion("I'm sorry, I cannot help with that.", "stop"), "refusal"),
        (Completion("Description: a red circle in the", "length", completion_tokens=120), "cut at the token limit"),
        (Completion("A red circle.", "stop"), "malformed answer: no Description and Caption line"),
        (Completion("Description: a red circle.", "stop"), "malformed answer: no Caption line"),
        (Completion(None, error="APITimeoutError: timed out", transient=True), "APITimeoutError"),
    ],
)
def test_answers_are_judged(answer, reason):
    description, caption, failure = judge(answer)
    if reason is None:
        assert (description, caption, failure) == ("a red circle.", "A red circle.", None)
    else:
        assert failure is not None and reason in failure and description is None


def test_parse_answer_reads_the_two_lines():
    assert parse_answer("Description: x y\nCaption: z") == ("x y", "z")
    assert parse_answer("caption: z\n\nDESCRIPTION: x") == ("x", "z")
    assert parse_answer("nothing") == (None, None)


def test_messages_become_openai_data_urls():
    from PIL import Image

    image = Image.new("RGB", (8, 8), (255, 0, 0))
    message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}
    (out,) = to_openai_messages([message])
    assert out["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    assert out["content"][1] == {"type": "text", "text": "hi"}


# -- the tiny LLaVA, through the step ----------------------------------------------------------------


WEB_ALT = {"alt_largest_only": 0.15, "alt_vague": 0.15, "alt_filename": 0.15}
# Measured when written (60 images of seed 12, 25 with faulty alt-text): all hints recall 0.551,
# precision 0.644, none 0.034; on the faulty rows the dense caption 0.500 (precision 0.639) against
# the alt-text's own 0.174. The bars leave room for another torch build's numerics.
RECALL_BAR, PRECISION_BAR = 0.42, 0.5
FAULTY_GAIN_BAR, FAULTY_PRECISION_BAR = 0.15, 0.45


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """60 images of seed 12 (the tiny LLaVA was trained on seed 4340), signs on 30%, and web-like
    alt-text on 45% (naming only the largest shape, a vague phrase or a file name), with the
    experts' columns, and the samples' json."""
    from dataclasses import replace

    folder = tmp_path_factory.mktemp("dense_pool")
    faults = replace(FaultRates.none(), **WEB_ALT)
    make_pool(str(folder), samples=60, shard_size=60, seed=12, faults=faults, text_rate=0.3)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])
    for name, params in EXPERTS.items():
        table = StepRunner(name, name, params)(table)
    return table, pool_metas(folder)


@pytest.fixture(scope="module")
def captioner() -> StepRunner:
    return StepRunner("dense_caption", "dense_caption", {"backend": {"kind": "transformers", **CPU}, "max_tokens": 120})


def _quality(out: pa.Table, metas: dict, column: str = "dense_description", where=None) -> tuple[float, float]:
    """Recall and precision of the colour + kind phrases ``column`` names, against the ground truth,
    over the rows whose sample json satisfies ``where``."""
    tp = named = gt = 0
    for uid, text in zip(out["uid"].to_pylist(), out[column].to_pylist(), strict=True):
        if where is not None and not where(metas[uid]):
            continue
        said, truth = named_shapes(text), true_shapes(metas[uid])
        tp, named, gt = tp + len(said & truth), named + len(said), gt + len(truth)
    return tp / max(1, gt), tp / max(1, named)


def _faulty_alt(meta: dict) -> bool:
    return meta["gt"]["fault"].startswith("alt_")


def test_committed_tiny_llava():
    assert (TINY_LLAVA_DIR / "config.json").is_file() and (TINY_LLAVA_DIR / "MODEL_CARD.md").is_file()
    assert sum(f.stat().st_size for f in TINY_LLAVA_DIR.iterdir()) < 60_000_000


def test_dense_captions_with_hints_name_the_shapes(captioner, unseen):
    """The perceptual-fusion claim, measured: the same model with the experts' hints and the alt-text
    names far more of the shapes than with no hints at all; and on the samples whose alt-text is
    web-like (names only the largest shape, nothing, or a file name), the dense caption names more
    of the shapes than the alt-text does. Figures measured when written are in the prints and
    README (``The tiny LLaVA``)."""
    table, metas = unseen
    out = captioner(table)
    assert out["status"].to_pylist().count("success") >= 0.9 * table.num_rows
    ok = out.filter(pa.compute.equal(out["status"], "success"))
    recall, precision = _quality(ok, metas)
    faulty_recall, faulty_precision = _quality(ok, metas, where=_faulty_alt)
    alt_recall, _ = _quality(ok, metas, column="caption", where=_faulty_alt)
    bare = StepRunner(
        "dense_caption", "dense_caption", {"backend": {"kind": "transformers", **CPU}, "hints": [], "max_tokens": 120}
    )(table)
    bare_ok = bare.filter(pa.compute.equal(bare["status"], "success"))
    bare_recall, _ = _quality(bare_ok, metas)
    print(
        f"tiny LLaVA dense captions: all hints recall {recall:.3f} precision {precision:.3f}; none {bare_recall:.3f}; "
        f"faulty alt-text ({sum(_faulty_alt(metas[u]) for u in ok['uid'].to_pylist())} rows): dense recall "
        f"{faulty_recall:.3f} precision {faulty_precision:.3f}, the alt-text itself {alt_recall:.3f}"
    )
    assert recall >= RECALL_BAR and precision >= PRECISION_BAR
    assert recall >= bare_recall + 0.2
    assert faulty_recall >= alt_recall + FAULTY_GAIN_BAR and faulty_precision >= FAULTY_PRECISION_BAR
    assert all(h == [] for h in bare_ok["dense_hints"].to_pylist())
    row = ok.slice(0, 1).to_pylist()[0]
    assert row["dense_model"] == TINY_LLAVA_NAME and re.fullmatch(r"[0-9a-f]{12}", row["dense_revision"])
    assert row["dense_prompt_version"].startswith("dense_caption@")
    assert any(h.startswith("Detection Information: ") for h in row["dense_hints"])
    assert row["dense_prompt_tokens"] > 36 and 0 < row["dense_completion_tokens"] <= 120
    assert row["dense_finish_reason"] == "stop" and row["dense_latency_s"] > 0
    assert row["dense_answer"].startswith("Description: ")


def test_a_missing_expert_column_fails_naming_the_field(captioner, unseen):
    table, _ = unseen
    with pytest.raises(StepInputError, match="ocr_prefix: column 'ocr_texts' is not in the batch"):
        captioner(table.drop_columns(["ocr_texts"]))
    alone = StepRunner(
        "dense_caption",
        "dense_caption",
        {"backend": {"kind": "transformers", **CPU}, "hints": ["alt_text"], "max_tokens": 120},
    )
    out = alone(table.slice(0, 2).drop_columns(["ocr_texts", "det_labels", "tags"]))
    assert all(h == [h[0]] and h[0].startswith("World Knowledge: ") for h in out["dense_hints"].to_pylist())


def test_a_tight_token_limit_is_a_recorded_failure(unseen):
    table, _ = unseen
    step = StepRunner("dense_caption", "dense_caption", {"backend": {"kind": "transformers", **CPU}, "max_tokens": 5})
    out = step(table.slice(0, 3))
    assert out["status"].to_pylist() == [STATUS_FAILED_CAPTION] * 3
    assert all("cut at the token limit" in e for e in out["error_message"].to_pylist())
    assert all(a is not None for a in out["dense_answer"].to_pylist())  # kept for the audit


# -- the openai backend: a real server, and broken ones -----------------------------------------------


def test_openai_backend_against_transformers_serve(unseen, captioner):
    """The same recipe step with backend.kind openai against ``transformers serve`` of the tiny LLaVA."""
    table, metas = unseen
    few = table.slice(0, 8)
    with transformers_serve(TINY_LLAVA_DIR) as url:
        step = StepRunner(
            "dense_caption",
            "dense_caption",
            {"backend": {"kind": "openai", "base_url": url, "model": str(TINY_LLAVA_DIR)}, "max_tokens": 120},
        )
        out = step(few)
    assert out["status"].to_pylist().count("success") >= 6, out["error_message"].to_pylist()
    ok = out.filter(pa.compute.equal(out["status"], "success"))
    assert all(n > 0 for n in ok["dense_completion_tokens"].to_pylist())
    assert ok["dense_model"].to_pylist()[0] == str(TINY_LLAVA_DIR)
    recall, _ = _quality(ok, metas)
    print(f"openai backend via transformers serve: recall {recall:.3f}")
    assert recall >= 0.4


@pytest.mark.parametrize("mode", ["error", "hang", "reset", "down"])
def test_broken_servers_give_transient_failures_in_bounded_time(mode):
    from PIL import Image

    image = Image.new("RGB", (32, 32), (0, 0, 255))
    request = ChatRequest(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}]
    )
    params = {"model": "m", "timeout_s": 1.0, "max_retries": 1, "concurrency": 2}
    t0 = time.monotonic()
    if mode == "down":
        from model_servers import free_port

        answers = OpenAIBackend(OpenAIParams(base_url=f"http://127.0.0.1:{free_port()}/v1", **params)).generate(
            [request] * 3
        )
    else:
        with broken_server(mode) as (url, handler):
            answers = OpenAIBackend(OpenAIParams(base_url=url, **params)).generate([request] * 3)
            assert handler.calls == 3 * 2  # each request tried once and retried once, by the client
    elapsed = time.monotonic() - t0
    assert all(a.text is None and a.transient and a.error for a in answers), answers
    if mode == "hang":  # the client's own timeout ended each attempt, not the server
        assert all("timed out" in a.error.lower() for a in answers), answers
    # 3 requests, 2 at a time, 2 attempts of at most 1 s each, plus backoff: about 4 s. The bound is
    # only a guard against hanging (a loaded machine may be slow); the counts above are the claim.
    assert elapsed < 120, elapsed


def test_a_bad_request_is_not_transient():
    from PIL import Image

    image = Image.new("RGB", (32, 32))
    request = ChatRequest([{"role": "user", "content": [{"type": "image", "image": image}]}])
    with broken_server("bad_request") as (url, handler):
        (answer,) = OpenAIBackend(OpenAIParams(base_url=url, model="m", max_retries=2)).generate([request])
    assert handler.calls == 1 and not answer.transient and "HTTP 400" in answer.error
    with broken_server("pinned") as (url, _):
        (answer,) = OpenAIBackend(OpenAIParams(base_url=url, model="other")).generate([request])
    assert "Server is pinned to 'm'; requested 'other'" in answer.error  # the server's own words, recorded


def test_unavailable_answers_fail_the_row_as_transient(unseen):
    table, _ = unseen
    with broken_server("error") as (url, _):
        step = StepRunner(
            "dense_caption",
            "dense_caption",
            {"backend": {"kind": "openai", "base_url": url, "model": "m", "max_retries": 0, "timeout_s": 2}},
        )
        out = step(table.slice(0, 2))
    assert out["status"].to_pylist() == [STATUS_CAPTION_UNAVAILABLE] * 2
    assert all("503" in e or "InternalServerError" in e for e in out["error_message"].to_pylist())


# -- the recipe, in a real run ------------------------------------------------------------------------


def test_dense_caption_recipe_captions_only_the_kept_rows(ray_session, tmp_path):
    """basic and the CLIP top 90% first (a global step: the plan cuts a stage there), then the
    experts and the tiny LLaVA on the rows still kept; queryable in the catalog."""
    from conftest import pool_pattern
    from run_helpers import run_in_process

    from curate.catalog import connect

    pool = tmp_path / "pool"
    make_pool(str(pool), samples=80, shard_size=40, seed=14, text_rate=0.3)
    # The dense caption becomes each sample's txt; every caption (and the hints) is in its json.
    run = run_in_process("dense_caption", pool_pattern(pool), tmp_path / "run", ["output.caption_field=dense_caption"])
    with connect(run.run_dir.root) as con:
        passed, asked, wrongly = con.execute(
            """SELECT
                 count(*) FILTER (WHERE list_contains(
                   list_transform(list_filter(decisions, lambda d: d.keep), lambda d: d.step), 'clip_fraction')),
                 count(*) FILTER (WHERE dense_answer IS NOT NULL),
                 count(*) FILTER (WHERE dense_answer IS NOT NULL AND len(list_filter(
                   decisions, lambda d: NOT d.keep AND d.step != 'dense_caption')) > 0)
               FROM samples"""
        ).fetchone()
        rows = con.execute(
            "SELECT dense_description, dense_caption, dense_hints, dense_completion_tokens FROM kept LIMIT 3"
        ).fetchall()
    # Every row the selection kept was asked once (the experts fail no row of this pool), and no row
    # that image_check, basic or the CLIP cut dropped ever reached the MLLM.
    assert passed > 20 and asked == passed and wrongly == 0
    assert all(r[0] and r[1] and r[2] and r[3] > 0 for r in rows)
    import webdataset as wds

    (shard, *_) = sorted((run.run_dir.root / "shards").glob("*.tar"))
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False)))
    meta = json.loads(sample["json"])
    assert sample["txt"].decode() == meta["dense_caption"] and meta["dense_description"]
    assert meta["caption"] and meta["dense_hints"] and meta["dense_prompt_version"].startswith("dense_caption@")
    # The report puts each new caption beside the original, with the hints the model was given.
    from report_browser import check_report

    shown = check_report(
        run.run_dir.root,
        "report-dense-caption.png",
        sections={"funnel", "scores", "captions", "galleries"},
        figures={"fig-caption-lengths", "fig-clip-score"},
        galleries={"gallery-captions-dense-caption", "gallery-kept"},
    )
    assert shown["galleries"]["gallery-captions-dense-caption"] == 6
    html = (run.run_dir.root / "report.html").read_text()
    assert html.count("<b>hints</b>") == 6 and html.count("<b>dense_caption</b>") == 6


def test_vllm_requests_are_built_without_vllm():
    """vLLM is optional: its backend module imports without it, and request building is pure."""
    import sys

    from PIL import Image

    from captioners.backends.vllm_backend import build_chat_inputs

    image = Image.new("RGB", (16, 16), (0, 255, 0))
    request = ChatRequest(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "describe"}]}],
        max_tokens=64,
    )
    conversations, sampling = build_chat_inputs([request, request], seed=3)
    assert conversations[0][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert conversations[0][0]["content"][1] == {"type": "text", "text": "describe"}
    assert sampling == [{"max_tokens": 64, "temperature": 0.0, "seed": 3}] * 2
    assert "vllm" not in sys.modules
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"backend.kind: 'vllm' needs vLLM"):
            StepRunner("dense_caption", "dense_caption", {"backend": {"kind": "vllm", "model": "/m"}})


def test_a_caption_field_that_is_not_a_column_fails_naming_the_field(tmp_path):
    from curate.sink.tars import write_tar

    rows = pa.table({"output_key": ["k"], "image_ext": ["jpg"], "image": [b"x"], "caption": ["a red circle"]})
    with pytest.raises(ValueError, match="output.caption_field: column 'dense_caption' is not in the kept rows"):
        write_tar(tmp_path / "s.tar", rows, "dense_caption")
    assert write_tar(tmp_path / "s.tar", rows, "caption") == 1


def test_a_model_the_server_does_not_have_fails_the_run_naming_the_field():
    from PIL import Image

    request = ChatRequest([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]}])
    with broken_server("not_found") as (url, _), pytest.raises(StepInputError, match="backend.model: .* answered 404"):
        OpenAIBackend(OpenAIParams(base_url=url, model="m")).generate([request])


def test_a_hung_endpoint_costs_a_batch_one_wave_of_timeouts_not_one_per_request():
    """After ``give_up_after`` transient failures in a row the rest of the batch is not sent (its
    rows fail as transient, for the next run); the next batch sends one request first, and an
    answer there resumes normal sending."""
    from PIL import Image

    request = ChatRequest([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]}])
    params = {"model": "m", "timeout_s": 1.0, "max_retries": 0, "concurrency": 2, "give_up_after": 2}
    with broken_server("hang") as (url, handler):
        backend = OpenAIBackend(OpenAIParams(base_url=url, **params))
        t0 = time.monotonic()
        answers = backend.generate([request] * 10)
        elapsed = time.monotonic() - t0
        # Two requests sent, both hung, the other eight never sent (the wall clock only guards a hang).
        assert handler.calls == 2 and elapsed < 120, (handler.calls, elapsed)
        assert all(a.transient and a.text is None for a in answers)
        assert sum(a.error.startswith("not sent: 2 requests in a row failed") for a in answers) == 8
        backend.generate([request] * 5)
        assert handler.calls == 3  # one probe, the endpoint still hangs, the other four not sent
        # a 400 is an answer about the request, not a sign the endpoint is down: sending resumes
        handler.mode = "bad_request"
        answers = backend.generate([request] * 4)
        assert handler.calls == 7 and not any(a.transient for a in answers)


def test_after_a_failure_no_request_is_sent_until_those_in_flight_have_answered():
    """How many requests a failing endpoint is sent does not depend on which fails first: here the
    first fails at once and the second hangs until its timeout. Sending the third while the second
    is still in flight would make three; waiting for the second's answer completes the streak of
    ``give_up_after`` = 2, and the other eight are not sent."""
    from PIL import Image

    request = ChatRequest([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]}])
    params = {"model": "m", "timeout_s": 1.0, "max_retries": 0, "concurrency": 2, "give_up_after": 2}
    with broken_server("error_then_hang") as (url, handler):
        answers = OpenAIBackend(OpenAIParams(base_url=url, **params)).generate([request] * 10)
        assert handler.calls == 2, handler.calls
        assert sum(a.error.startswith("not sent: 2 requests in a row failed") for a in answers) == 8


def test_the_recipe_switches_to_the_openai_backend_with_the_documented_sets():
    """The `--set`s that pipelines/dense_caption.yaml and the README give make a valid recipe."""
    from curate.config import load_recipe

    sets = [
        "steps.dense_caption.params.backend.kind=openai",
        "steps.dense_caption.params.backend.base_url=http://127.0.0.1:8000/v1",
        "steps.dense_caption.params.backend.model=NAME",
    ]
    recipe = load_recipe("dense_caption", sets, input_path="pool/*.tar", output_path="run")
    (step,) = [s for s in recipe.steps if s.name == "dense_caption"]
    assert step.params["backend"] == {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "NAME"}
