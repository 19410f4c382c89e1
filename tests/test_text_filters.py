"""Whole-word phrase matching, the text-based filter and text embeddings."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from run_helpers import sample_table

import filters.text_based  # noqa: F401 - registers the step before the registry lists it
import filters.text_embed  # noqa: F401
from curate.steps import StepRunner
from filters.text_match import PhraseMatcher, read_entries


def _table(captions, statuses=None, metas=None):
    return sample_table(captions, statuses, metas)


# --- matcher -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("cat", True),
        ("a cat.", True),
        ("(cat)", True),
        ("the cat's toy", True),
        ("cat-like eyes", True),
        ("a CAT on a mat", True),
        ("category", False),
        ("concatenate", False),
        ("bobcat", False),
        ("cats", False),
        ("cat2", False),
        ("", False),
        (None, False),
    ],
)
def test_single_word_matches_only_whole_words(text, hit):
    assert (PhraseMatcher(["cat"]).matches(text) == [0]) is hit


def test_multi_word_entries_match_as_phrases():
    m = PhraseMatcher(["red car", "car", "ice cream"])
    assert m.matches("A red car, parked.") == [0, 1]
    assert m.matches("a red carpet") == []
    assert m.matches("red  car") == [0, 1]  # whitespace runs count as one space
    assert m.matches("a red\ncar") == [0, 1]
    assert m.matches("red, car") == [1]  # the phrase, not its words anywhere
    assert m.matches("Ice Cream!") == [2]
    assert m.matches("dice cream") == []


def test_unicode_letters_are_word_characters():
    m = PhraseMatcher(["caf", "café"])
    assert m.matches("un café noir") == [1]
    assert m.matches("CAFÉ") == [1]


def test_case_sensitive_option_and_duplicates():
    strict = PhraseMatcher(["Apple", "apple"], case_insensitive=False)
    assert strict.matches("Apple pie") == [0]
    assert strict.matches("apple pie") == [1]
    loose = PhraseMatcher(["Apple", "apple", " dog "])
    assert loose.matches("an APPLE and a dog") == [0, 1, 2]


def test_batch_and_entry_counts():
    m = PhraseMatcher(["dog", "cat", "bird"])
    texts = ["a dog and a dog", "cat dog", None, "birds"]
    assert m.matches_batch(texts) == [[0], [0, 1], [], []]
    assert m.entry_counts(texts).tolist() == [2, 1, 0]  # a text counts once per entry


def test_empty_or_blank_entries_are_errors():
    with pytest.raises(ValueError, match="concepts: the list of entries is empty"):
        PhraseMatcher([], source="concepts")
    with pytest.raises(ValueError, match="entry 1 is blank"):
        PhraseMatcher(["dog", "  "])


def test_read_entries_text_and_json(tmp_path):
    text = tmp_path / "vocab.txt"
    text.write_text("# ImageNet-ish\n\ndog\n  golden retriever  \n# comment\ncat\n")
    assert read_entries(text) == ["dog", "golden retriever", "cat"]
    js = tmp_path / "metadata.json"
    js.write_text(json.dumps(["dog", "", "hot dog"]))
    assert read_entries(js) == ["dog", "hot dog"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt.*has no entries"):
        read_entries(empty)
    with pytest.raises(ValueError, match=r"missing\.txt.*does not exist"):
        read_entries(tmp_path / "missing.txt")
    bad = tmp_path / "bad.json"
    bad.write_text('{"dog": 1}')
    with pytest.raises(ValueError, match="JSON list of strings"):
        read_entries(bad)


def test_many_entries_over_many_captions_match_whole_words_exactly():
    """5k entries (4k words, 1k two-word phrases) over 10k captions: the counts cover every caption
    and a sample agrees with a plain whole-word test. The time is printed, never asserted (the
    MetaCLIP bench measures speed)."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(7000)})
    entries = words[:4000] + [f"{a} {b}" for a, b in zip(words[4000:5000], words[5000:6000], strict=True)]
    captions = [" ".join(rng.choice(words, size=12)) + "." for _ in range(10_000)]
    start = time.perf_counter()
    m = PhraseMatcher(entries)
    counts = m.entry_counts(captions)
    elapsed = time.perf_counter() - start
    assert len(entries) == 5000
    assert counts.sum() > 10_000
    # Cross-check a sample against a plain whole-word test.
    for caption in captions[:50]:
        tokens = caption.rstrip(".").split()
        expected = {i for i, e in enumerate(entries[:4000]) if e in tokens}
        assert {i for i in m.matches(caption) if i < 4000} == expected
    print(f"5k entries x 10k captions: {elapsed:.2f} s")


# --- text_based ----------------------------------------------------------------------------------


def test_text_based_decisions():
    captions = [
        "A golden retriever playing on the beach",
        "a photo of a living room with a sofa",
        "quarterly results of the company",
        "Un chien et un piano dans une grande salle de concert",
        "",
        "category theory lecture notes for students",
        "failed row with a dog",
    ]
    statuses = ["success"] * 6 + ["failed_to_download"]
    params = {"concepts": ["golden retriever", "dog", "sofa", "piano", "cat"]}
    out = StepRunner("text_based", "text", params)(_table(captions, statuses))
    assert out["concept_matches"].to_pylist()[:6] == [["golden retriever"], ["sofa"], [], ["piano"], [], []]
    assert out["concept_count"].to_pylist() == [1, 1, 0, 1, 0, 0, None]
    assert out["keep"].to_pylist() == [True, True, False, False, False, False, False]
    assert out["drop_reason"].to_pylist() == [
        None,
        None,
        "text:no_concept_match",
        "text:non_english",
        "text:no_concept_match",
        "text:no_concept_match",
        "read:failed_to_download",
    ]


def test_text_based_any_language_and_case_sensitive(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# concepts\nPiano\n\nchien\n")
    table = _table(["Un chien et un piano dans une grande salle", "a Piano", "a piano"])
    out = StepRunner("text_based", "t", {"vocabulary": str(vocab), "language": None, "lowercase": False})(table)
    assert out["concept_matches"].to_pylist() == [["chien"], ["Piano"], []]
    assert out["keep"].to_pylist() == [True, True, False]


def test_text_based_vocabulary_errors(tmp_path):
    with pytest.raises(ValueError, match=r"vocabulary: file .*nope\.txt.* does not exist"):
        StepRunner("text_based", "t", {"vocabulary": str(tmp_path / "nope.txt")})
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt.*has no entries"):
        StepRunner("text_based", "t", {"vocabulary": str(empty)})
    with pytest.raises(ValueError, match="exactly one of vocabulary"):
        StepRunner("text_based", "t", {})
    with pytest.raises(ValueError, match="concepts: the list is empty"):
        StepRunner("text_based", "t", {"concepts": []})
    with pytest.raises(ValueError, match="Extra inputs"):
        StepRunner("text_based", "t", {"concepts": ["dog"], "threshold": 1})


# --- text_embed ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    return StepRunner("text_embed", "emb", {"device": "cpu", "inference_batch_size": 4})


def _vectors(table: pa.Table, column: str = "text_emb") -> np.ndarray:
    col = table[column].combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)


def test_text_embed_dims_norm_and_determinism(embedder):
    captions = ["a dog running on the grass", "a puppy playing in a field", "quarterly tax report spreadsheet"]
    table = _table([*captions, "", None], ["success"] * 5)
    out = embedder(table)
    assert out["text_emb"].type == pa.list_(pa.float16(), 384)
    v = _vectors(out)
    assert v.shape == (5, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)
    assert np.array_equal(v, _vectors(embedder(table)))
    assert np.allclose(v[3], v[4], atol=2e-3)  # None embeds as "" (batch padding may move the last bit)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    assert sim[0, 1] > sim[1, 2] + 0.2
    assert out["keep"].to_pylist() == [True] * 5  # annotate-only
    assert out["decisions"].to_pylist() == [[]] * 5


def test_text_embed_failed_rows_and_template():
    runner = StepRunner("text_embed", "e", {"device": "cpu", "text": "a photo of {caption}", "prefix": "mode"})
    out = runner(_table(["a dog", "x"], ["success", "failed_to_download"]))
    assert out["mode_emb"].null_count == 1
    plain = StepRunner("text_embed", "e", {"device": "cpu"})(_table(["a photo of a dog"]))
    assert np.allclose(_vectors(out.slice(0, 1), "mode_emb"), _vectors(plain), atol=2e-3)


def test_text_embed_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"no-such-org/no-such-model.*neither a local path nor in the Hugging Face cache"
    ):
        StepRunner("text_embed", "e", {"model": "no-such-org/no-such-model", "device": "cpu"})
    with pytest.raises(ValueError, match="not a loadable sentence-transformers model"):
        StepRunner("text_embed", "e", {"model": str(tmp_path), "device": "cpu"})
    with pytest.raises(ValueError, match="template"):
        StepRunner("text_embed", "e", {"text": "{0}"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: value 'cuda'"):
            StepRunner("text_embed", "e", {"device": "cuda"})
