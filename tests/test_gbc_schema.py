"""The GBC schema reads and writes the real GBC records of ../shared/data/gbc-wiki without loss."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED
from pydantic import ValidationError

from schemas.gbc import Graph

RECORDS = SHARED / "data" / "gbc-wiki" / "gbc_graphs.jsonl"


def _records() -> list[dict]:
    return [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]


def test_every_gbc_wiki_record_round_trips():
    records = _records()
    assert len(records) == 19
    for record in records:
        graph = Graph.from_json(record)
        assert json.dumps(graph.to_json(), sort_keys=True) == json.dumps(record, sort_keys=True)
    labels = {v.label for r in records for v in Graph.from_json(r).vertices}
    assert labels == {"image", "entity", "composition", "relation"}  # the records use every kind


def test_a_record_reads_back_only_the_fields_it_had():
    minimal = {"vertices": [{"vertex_id": "", "bbox": {"left": 0.0, "top": 0.0, "right": 1.0, "bottom": 1.0},
                             "label": "image", "descs": [{"text": "a dog", "label": "short"}]}]}  # fmt: skip
    assert Graph.from_json(minimal).to_json() == minimal


def test_an_unknown_field_or_label_fails_naming_it():
    record = _records()[0]
    record["vertices"][0]["colour"] = "red"
    with pytest.raises(ValidationError, match=r"vertices\.0\.colour"):
        Graph.from_json(record)
    record = _records()[0]
    record["vertices"][1]["label"] = "object"
    with pytest.raises(ValidationError, match=r"vertices\.1\.label"):
        Graph.from_json(record)
