"""GBC graphs: the validator on the real gbc-wiki graphs and on broken ones, the graph-to-text formats,
the graph builder's ids, merging and bounds, and the box geometry of the procedure."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import SHARED

from captioners.gbc_geometry import (
    composition_hints,
    direction,
    relation_hints,
    relation_pairs,
    select_boxes,
    spanning_tree,
)
from captioners.gbc_graph import GraphBuilder, singular
from captioners.gbc_text import graph_text, order
from schemas.gbc import Graph
from schemas.gbc_validate import validate

GRAPHS = SHARED / "data" / "gbc-wiki" / "gbc_graphs.jsonl"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in GRAPHS.read_text().splitlines() if line.strip()]


def test_every_real_graph_passes_the_validator(records):
    assert len(records) == 19
    for r in records:
        assert validate(Graph.from_json(r)) == [], r["img_path"]


def _broken(record: dict, change) -> list[str]:
    r = copy.deepcopy(record)
    change(r)
    return validate(Graph.from_json(r))


def _vertex(r: dict, vid: str) -> dict:
    return next(v for v in r["vertices"] if v["vertex_id"] == vid)


def test_broken_graphs_fail_naming_the_problem(records):
    horses = next(r for r in records if r["img_path"].endswith("Wild_horses.jpg"))

    def twice(r):
        r["vertices"].append(copy.deepcopy(_vertex(r, "sky")))

    def one_sided(r):
        _vertex(r, "sky")["in_edges"] = []

    def outside(r):
        _vertex(r, "sky")["bbox"]["right"] = 1.3

    def escaped(r):
        _vertex(r, "trees_0")["bbox"].update(left=0.0, right=0.1)  # its composition spans 0.18 - 0.96

    def renamed(r):
        _vertex(r, "[horse|snow]")["vertex_id"] = "[snow|horse]"
        for v in r["vertices"]:
            for e in v["in_edges"] + v["out_edges"]:
                for end in ("source", "target"):
                    if e[end] == "[horse|snow]":
                        e[end] = "[snow|horse]"

    def cycle(r):
        edge = {"source": "sky", "text": "sky", "target": ""}
        _vertex(r, "sky")["out_edges"].append(edge)
        _vertex(r, "")["in_edges"].append(edge)

    def bad_id(r):
        old, new = "sky", "cloud"
        for v in r["vertices"]:
            if v["vertex_id"] == old:
                v["vertex_id"] = new
            for e in v["in_edges"] + v["out_edges"]:
                e["target"] = new if e["target"] == old else e["target"]

    def two_roots(r):
        extra = copy.deepcopy(_vertex(r, ""))
        extra.update(vertex_id="again", out_edges=[])
        r["vertices"].append(extra)

    assert "vertex id 'sky' is used twice" in _broken(horses, twice)
    assert any("not among the target's in-edges" in p for p in _broken(horses, one_sided))
    assert any("outside [0, 1]" in p for p in _broken(horses, outside))
    assert any("'trees_0': box is not inside its parent 'trees'" in p for p in _broken(horses, escaped))
    assert any("relation '[snow|horse]': id should be '[horse|snow]'" in p for p in _broken(horses, renamed))
    assert any(p.startswith("cycle through") for p in _broken(horses, cycle))
    assert any("entity 'cloud': id follows from none of its in-edges" in p for p in _broken(horses, bad_id))
    assert _broken(horses, two_roots) == ["2 image vertices; a graph has exactly one root"]


@pytest.mark.parametrize("text_format", ["set", "set_with_bbox", "concat", "structured"])
@pytest.mark.parametrize("traversal", ["bfs", "dfs", "topological", "random"])
def test_every_format_and_traversal_runs_on_the_real_graphs(records, text_format, traversal):
    for r in records:
        g = Graph.from_json(r)
        text = graph_text(g, text_format, traversal, seed=r["img_path"])
        assert text == graph_text(g, text_format, traversal, seed=r["img_path"])  # seeded: the same each run
        captions = {" ".join(d.text.split()) for v in g.vertices for d in v.descs}
        if text_format == "structured":
            assert text.count('"]') + text.count('" [') >= len(g.vertices)
            assert all(f'"{v.vertex_id}"' in text for v in g.vertices)
        elif text_format == "concat":
            assert all(c in text for c in captions)
        else:
            lines = text.split("\n")
            assert len(lines) == len(set(lines)) == len(captions)
            if text_format == "set_with_bbox":
                assert all(line.startswith("[") and "] " in line for line in lines)


def test_traversal_orders(records):
    g = Graph.from_json(records[0])
    by_id = {v.vertex_id: v for v in g.vertices}
    for traversal in ("bfs", "dfs", "topological", "random"):
        ids = [v.vertex_id for v in order(g, traversal, seed=1)]
        assert sorted(ids) == sorted(by_id) and ids[0] == ""
    topo = [v.vertex_id for v in order(g, "topological")]
    for v in g.vertices:
        for e in v.in_edges:
            assert topo.index(e.source) < topo.index(v.vertex_id)
    bfs = [v.vertex_id for v in order(g, "bfs")]
    children = list(dict.fromkeys(e.target for e in by_id[""].out_edges))
    assert bfs[1 : 1 + len(children)] == children
    assert {tuple(v.vertex_id for v in order(g, "random", seed=s)) for s in range(6)} != {tuple(bfs)}


def test_clip_thresholds_drop_weak_captions_but_never_hardcode(records):
    horses = copy.deepcopy(next(r for r in records if r["img_path"].endswith("Wild_horses.jpg")))
    for v in horses["vertices"]:
        for d in v["descs"]:
            d["clip_scores"] = {"scores": {"m": 0.1}, "truncation": False}
    g = Graph.from_json(horses)
    full = graph_text(g, "set")
    kept = graph_text(g, "set", thresholds={"detail-entity": 0.15, "hardcode-composition": 0.9}, clip_model="m")
    dropped = set(full.split("\n")) - set(kept.split("\n"))
    entity_details = {" ".join(d.text.split()) for v in g.vertices if v.label == "entity" for d in v.descs}
    assert dropped == entity_details
    assert "tree 1 is to the right of tree 2." in kept  # hardcode, kept whatever its threshold


def test_the_builder_names_merges_and_bounds():
    b = GraphBuilder(max_vertices=7)
    assert b.add_entity("", "horse", "horse", (0.2, 0.3, 0.6, 0.9), 0.8) == "horse"
    comp, members = b.add_group("", "trees", [(0.7, 0.2, 0.9, 0.6), (0.1, 0.2, 0.3, 0.5)], [0.5, 0.4])
    assert comp == "trees" and members == ["trees_0", "trees_1"]
    assert [(e.text, e.target) for e in b.nodes["trees"].out_edges] == [("tree 1", "trees_0"), ("tree 2", "trees_1")]
    # the same horse found again, as a part of a tree: it joins the node, which is not queried again
    assert b.add_entity("trees_0", "horse", "trees_0_horse", (0.21, 0.3, 0.6, 0.9), 0.7) is None
    assert b.nodes["horse"].box == (0.2, 0.3, 0.6, 0.9)
    assert [e.source for e in b.nodes["horse"].in_edges] == ["", "trees_0"]
    b.add_relation("", "The horse stands before the trees.", [("horse", "horse"), ("trees", "trees")])
    b.add_relation("", "The trees frame the horse.", [("trees", "trees"), ("horse", "horse")])
    assert len(b.nodes["[horse|trees]"].descs) == 2
    b.describe("", "Horses and trees.", "short")
    assert validate(b.graph()) == []
    assert b.add_entity("", "sky", "sky", (0, 0, 1, 0.4), 0.9) == "sky"
    assert b.add_entity("", "snow", "snow", (0, 0.6, 1, 1), 0.9) is None and b.full
    assert any("max_vertices (7) reached" in p for p in b.problems)
    b.drop("trees_1")
    b.drop("trees_0")  # its composition is left with no member: gone too, with its edges
    assert "trees" not in b.nodes and validate(b.graph()) == []


def test_singular_forms():
    assert [singular(t) for t in ("blue squares", "red ellipses", "trees", "horse", "people")] == [
        "blue square",
        "red ellipse",
        "tree",
        "horse",
        "person",
    ]


def test_box_selection_follows_the_reference_order():
    crop = (1000.0, 1000.0)
    boxes = [
        (100, 100, 300, 300),  # 0.9: kept
        (110, 100, 310, 300),  # 0.88: overlaps 0 (IoU 0.9) - NMS drops it
        (600, 600, 800, 800),  # 0.87: kept for multiple; within 0.05 of the best for single
        (10, 10, 40, 40),  # 0.95: area 900 px < 5000
        (500, 100, 700, 300),  # 0.2: score <= 0.35
        (0, 0, 999, 999),  # 0.8: 99.8% of the crop inside an entity; otherwise contains others
        (400, 400, 520, 520),  # 0.6: for single, more than 0.05 below the best
    ]
    scores = [0.9, 0.88, 0.87, 0.95, 0.2, 0.8, 0.6]
    assert select_boxes(boxes, scores, crop, multiple=True, inside_entity=True) == [0, 2, 6]
    assert select_boxes(boxes, scores, crop, multiple=False, inside_entity=True) == [0, 2]
    # at the image level the whole-crop box is allowed, but it contains the others
    assert select_boxes(boxes, scores, crop, multiple=True, inside_entity=False) == [0, 2, 6]
    many = [(k * 100, 0, k * 100 + 90, 90) for k in range(9)]
    assert len(select_boxes(many, [0.9] * 9, crop, multiple=True, inside_entity=False)) == 6


def test_directions_and_arrangement_hints():
    left, right, low = (0, 0, 10, 10), (20, 0, 30, 10), (20, 20, 30, 30)
    assert direction(right, left) == "to the right of"
    assert direction(left, right) == "to the left of"
    assert direction(low, left) == "below and to the right of"
    assert direction(left, low) == "above and to the left of"
    assert direction(low, right) == "below"
    assert spanning_tree([left, right, low]) == [(0, 1), (1, 2)]
    hints = composition_hints(["tree 1", "tree 2", "tree 3"], [left, right, low])
    assert hints == [
        "tree 1 is in the top left corner of the composition",
        "tree 2 is in the top right corner of the composition",
        "tree 3 is in the bottom right corner of the composition",
        "tree 2 is to the right of tree 1.",
        "tree 3 is below tree 2.",
    ]
    pairs = relation_pairs([("dog", left, False), ("cats", right, True), ("ball", low, False)], limit=2)
    assert relation_hints(pairs) == ["dog is to the left of cats", "dog is above and to the left of ball"]
