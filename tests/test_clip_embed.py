"""The clip_embed step: the committed tiny CLIP, real architectures with random weights, failures."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

import filters.clip_embed  # noqa: F401 - registers the step before curate.registry lists it
from curate.models import TINY_CLIP_NAME, TINY_CLIP_WEIGHTS
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import FaultRates, load_ground_truth, make_pool
from filters.clip_embed import cached_checkpoint
from schemas.tables import STATUS_FAILED_DECODE, empty_sample_table, rows_to_sample_table

TINY = {"model": TINY_CLIP_NAME, "device": "cpu"}


def _pool_table(folder) -> pa.Table:
    return pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> pa.Table:
    """24 clean samples of an unseen pool (the tiny CLIP was trained on seed 1234)."""
    folder = tmp_path_factory.mktemp("clip_pool")
    make_pool(str(folder), samples=24, shard_size=24, seed=5, faults=FaultRates.none())
    return _pool_table(folder)


@pytest.fixture(scope="module")
def tiny() -> StepRunner:
    return StepRunner("clip_embed", "clip_embed", TINY)


def _with_captions(table: pa.Table, captions: list[str]) -> pa.Table:
    return table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions, pa.string()))


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32).reshape(len(column), -1)


def test_committed_weights_exist():
    assert TINY_CLIP_WEIGHTS.is_file()
    assert TINY_CLIP_WEIGHTS.stat().st_size < 10_000_000


def test_true_pairs_outscore_swapped_pairs(tiny, shapes):
    captions = shapes["caption"].to_pylist()
    true = tiny(shapes)["clip_score"].to_numpy()
    swapped = tiny(_with_captions(shapes, captions[1:] + captions[:1]))["clip_score"].to_numpy()
    assert (true > swapped).mean() >= 0.9
    assert true.mean() - swapped.mean() > 0.3


def test_embeddings_are_unit_norm_float16(shapes):
    out = StepRunner("clip_embed", "clip_embed", {**TINY, "prefix": "tiny"})(shapes)
    for name in ("tiny_image_emb", "tiny_text_emb"):
        assert out.schema.field(name).type == pa.list_(pa.float16(), 128)
        norms = np.linalg.norm(_matrix(out[name]), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert out.schema.field("tiny_score").type == pa.float32()
    cosine = (_matrix(out["tiny_image_emb"]) * _matrix(out["tiny_text_emb"])).sum(axis=1)
    np.testing.assert_allclose(out["tiny_score"].to_numpy(), cosine, atol=5e-3)
    assert "clip_score" not in out.column_names


def test_encode_texts_matches_text_embeddings(tiny, shapes):
    out = tiny(shapes.slice(0, 3))
    texts = tiny.step.encode_texts(shapes["caption"].to_pylist()[:3])
    assert texts.shape == (3, 128) and texts.dtype == np.float32
    np.testing.assert_allclose(texts, _matrix(out["clip_text_emb"]), atol=2e-3)
    assert tiny.step.encode_texts([]).shape == (0, 128)


def test_undecodable_images_fail_the_row_only(tiny, shapes):
    rows = shapes.slice(0, 5).to_pylist()
    rows[1]["image"] = b"this is not an image"
    rows[3]["image"] = rows[3]["image"][: len(rows[3]["image"]) // 2]  # a truncated JPEG
    rows[4]["caption"] = None  # a missing caption is embedded as ""
    out = tiny(rows_to_sample_table(rows))
    assert out["status"].to_pylist() == ["success", STATUS_FAILED_DECODE, "success", STATUS_FAILED_DECODE, "success"]
    errors = out["error_message"].to_pylist()
    assert errors[1] and errors[3] and errors[0] is None
    assert out["clip_score"].null_count == 2 and out["clip_image_emb"].null_count == 2
    assert out["drop_reason"].to_pylist()[1] == f"clip_embed:{STATUS_FAILED_DECODE}"
    assert out["keep"].to_pylist() == [True, False, True, False, True]


def test_empty_table_gets_typed_columns(tiny):
    out = tiny(empty_sample_table())
    assert out.num_rows == 0
    assert out.schema.field("clip_image_emb").type == pa.list_(pa.float16(), 128)
    assert out.schema.field("clip_text_emb").type == pa.list_(pa.float16(), 128)
    assert out.schema.field("clip_score").type == pa.float32()


def test_tag_curate_names_the_committed_weights(shapes):
    """``pretrained: curate`` loads the committed file: the same scores as naming the file by path,
    and not those of random weights."""
    from curate.models import TINY_CLIP_WEIGHTS

    rows = shapes.slice(0, 2)
    by_tag = StepRunner("clip_embed", "clip_embed", {**TINY, "pretrained": "curate"})(rows)
    by_path = StepRunner("clip_embed", "clip_embed", {**TINY, "pretrained": str(TINY_CLIP_WEIGHTS)})(rows)
    random = StepRunner("clip_embed", "clip_embed", {**TINY, "random_init": True})(rows)
    assert by_tag["clip_score"].null_count == 0
    np.testing.assert_allclose(by_tag["clip_score"].to_numpy(), by_path["clip_score"].to_numpy(), atol=1e-5)
    assert not np.allclose(by_tag["clip_score"].to_numpy(), random["clip_score"].to_numpy(), atol=1e-2)


def test_random_init_builds_a_real_architecture(shapes):
    runner = StepRunner("clip_embed", "clip_embed", {"model": "ViT-B-32", "random_init": True, "device": "cpu"})
    out = runner(shapes.slice(0, 2))
    assert out.schema.field("clip_image_emb").type == pa.list_(pa.float16(), 512)
    assert np.isfinite(out["clip_score"].to_numpy()).all()
    assert runner.step.image_size == 224


def test_random_init_of_the_tiny_model_ignores_its_weights(tiny, shapes):
    rows = shapes.slice(0, 4)
    trained = tiny(rows)["clip_score"].to_numpy()
    random = StepRunner("clip_embed", "clip_embed", {**TINY, "random_init": True})(rows)["clip_score"].to_numpy()
    assert not np.allclose(trained, random, atol=0.05)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "ViT-Z-99", "random_init": True}, "model: value 'ViT-Z-99' is not an open_clip model"),
        ({"model": "ViT-B-32"}, "pretrained: value None for model 'ViT-B-32'"),
        ({"model": "ViT-B-32", "pretrained": "no_such_tag"}, "pretrained: value 'no_such_tag' is not a pretrained tag"),
        ({"model": "ViT-B-32", "pretrained": "/no/such/ckpt.pt"}, "pretrained: checkpoint file '/no/such/ckpt.pt'"),
        ({"model": TINY_CLIP_NAME, "pretrained": "openai"}, "pretrained: value 'openai' is neither 'curate'"),
        ({"model": "ViT-B-32", "pretrained": "openai", "random_init": True}, "random_init: true conflicts"),
        ({**TINY, "batch": 3}, "batch"),
    ],
)
def test_bad_params_fail_at_construction(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StepRunner("clip_embed", "clip_embed", params)


def test_cuda_requested_without_cuda_fails():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device: value 'cuda'"):
        StepRunner("clip_embed", "clip_embed", {**TINY, "device": "cuda"})


def _skip_if_cached(model: str, tag: str) -> None:
    from open_clip.pretrained import get_pretrained_cfg

    if cached_checkpoint(get_pretrained_cfg(model, tag)) is not None:
        pytest.skip(f"{model} {tag} weights are in the local cache")


def _count_network_attempts(monkeypatch) -> dict[str, int]:
    """Count connection attempts and weight downloads (the real calls still run): failing fast means
    no download is tried at all, instead of open_clip's retries for a minute per batch."""
    import socket

    import open_clip

    calls = {"connect": 0, "download": 0}
    real_connect, real_download = socket.create_connection, open_clip.download_pretrained

    def connect(*args, **kwargs):
        calls["connect"] += 1
        return real_connect(*args, **kwargs)

    def download(*args, **kwargs):
        calls["download"] += 1
        return real_download(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(open_clip, "download_pretrained", download)
    return calls


def test_tag_needing_a_download_fails_fast_when_offline(monkeypatch):
    _skip_if_cached("ViT-B-32", "datacomp_xl_s13b_b90k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _count_network_attempts(monkeypatch)
    with pytest.raises(ValueError, match=r"pretrained: tag 'datacomp_xl_s13b_b90k'.*HF_HUB_OFFLINE is set \(offline\)"):
        StepRunner("clip_embed", "clip_embed", {"model": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"})
    assert calls == {"connect": 0, "download": 0}


def test_tag_needing_a_download_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    _skip_if_cached("ViT-B-32", "datacomp_xl_s13b_b90k")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 6761)
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    calls = _count_network_attempts(monkeypatch)
    with pytest.raises(
        ValueError, match=r"needs a download from https://hub\.invalid/.*cannot be reached \(offline\?\)"
    ):
        StepRunner("clip_embed", "clip_embed", {"model": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"})
    assert calls == {"connect": 1, "download": 0}  # one probe of the host, no download tried


def test_clip_score_top_80_percent_removes_swapped_captions(tiny, tmp_path):
    """The quality bar of the tiny CLIP: on an unseen pool with 20% swapped captions, keeping the top
    80% by clip_score (DataComp's fraction rule) removes >= 90% of swapped pairs and <= 5% of clean."""
    rates = FaultRates(**{**FaultRates.none().as_dict(), "swapped_caption": 0.2})
    make_pool(str(tmp_path), samples=1500, shard_size=500, seed=11, faults=rates, workers=2)
    out = tiny(_pool_table(tmp_path))
    score_of = dict(zip(out["uid"].to_pylist(), out["clip_score"].to_pylist(), strict=True))
    truth = load_ground_truth(str(tmp_path))
    scores = np.array([score_of[uid] for uid in truth["uid"].to_pylist()])
    swapped = np.array([fault == "swapped_caption" for fault in truth["fault"].to_pylist()])
    assert 200 < swapped.sum() < 400
    threshold = np.sort(scores)[::-1][int(len(scores) * 0.8)]
    kept = scores >= threshold
    assert (~kept[swapped]).mean() >= 0.9
    assert (~kept[~swapped]).mean() <= 0.05
