"""The tokenize step: templates over columns and pool metadata, HF and open_clip tokenizers."""

from __future__ import annotations

import pytest
from run_helpers import sample_table

from curate.config import RecipeError, validate_recipe
from curate.steps import StepRunner


def _table(captions, statuses=None, metas=None):
    return sample_table(captions, statuses, metas)


def test_offline_bert_tokenizer_appends_sep():
    out = StepRunner("tokenize", "tokenize", {})(_table(["a red circle"]))
    tokens = out["tokens"][0].as_py()
    assert tokens[-1] == 102  # BERT's [SEP] closes the document
    assert len(tokens) == out["num_tokens"][0].as_py() == 4


def test_template_reads_meta_fields_and_fails_rows_missing_them():
    table = _table(["a red circle", "a blue star"], metas=[{"dense_caption": "a long description"}, {}])
    out = StepRunner("tokenize", "tok", {"text": "{caption}. {meta.dense_caption}"})(table)
    assert out["status"].to_pylist() == ["success", "failed_to_tokenize"]
    assert "meta.dense_caption" in out["error_message"][1].as_py()
    assert out["keep"].to_pylist() == [True, False]


def test_image_tokens_are_counted_in():
    out = StepRunner("tokenize", "tok", {"image_tokens": 16, "image_token_id": 7})(_table(["a red circle"]))
    assert out["tokens"][0].as_py()[:16] == [7] * 16 and out["num_tokens"][0].as_py() == 20


def test_open_clip_tokenizer():
    out = StepRunner("tokenize", "tok", {"tokenizer": "open_clip:ViT-B-32"})(_table(["a red circle"]))
    tokens = out["tokens"][0].as_py()
    assert len(tokens) == 4 and tokens[-1] == 49407  # open_clip's end-of-text


def test_bad_template_and_bucket_recipe_errors():
    with pytest.raises(RecipeError, match=r"steps\.0\.params\.text"):
        validate_recipe({"steps": [{"name": "tokenize", "params": {"text": "no fields"}}]})
    with pytest.raises(RecipeError, match="needs a tokenize and a decompose step"):
        validate_recipe({"output": {"layout": "buckets"}, "steps": [{"name": "basic"}]})
    with pytest.raises(RecipeError, match=r"output\.tokens_per_batch"):
        validate_recipe(
            {
                "output": {"layout": "buckets", "tokens_per_batch": 64},
                "steps": [{"name": "tokenize"}, {"name": "decompose", "params": {"max_k": 8}}],
            }
        )
