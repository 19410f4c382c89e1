"""Training text from a graph: its node captions as a set, a set with boxes, one concatenation, or a
structured serialisation, in ``bfs``, ``dfs``, ``topological`` or ``random`` order of the vertices.

- ``set``: one caption per line, each once;
- ``set_with_bbox``: the same, each line prefixed with its vertex's box ``[l, t, r, b]`` (2 decimals);
- ``concat``: all captions in one paragraph;
- ``structured``: one block per vertex, ``<label> "<id>" [box]:`` then its captions as ``- `` lines,
  then ``children: `` and the phrases naming its children, so the graph can be read back.

Per-type CLIP thresholds drop weak node captions: a caption whose ``clip_scores.scores[model]`` is
below the threshold of its ``full_label`` (``detail-entity``, ``short-image``, ...) is left out;
``hardcode`` captions and captions without a score are kept. ``random`` is seeded (by the sample's
uid in the step) so a re-run writes the same text.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Literal

from schemas.gbc import Graph, NodeCaption, Vertex

TextFormat = Literal["set", "set_with_bbox", "concat", "structured"]
Traversal = Literal["bfs", "dfs", "topological", "random"]
# ml-gbc's thresholds for DFN5B-CLIP-ViT-H-14 (its CLIP filtering config); calibrate for another model.
DFN5B_THRESHOLDS = {
    "original-image": 0.2497,
    "short-image": 0.2311,
    "detail-image": 0.1917,
    "relation-relation": 0.1852,
    "composition-composition": 0.1181,
    "short-composition": 0.1398,
    "detail-entity": 0.1533,
}


def order(graph: Graph, traversal: Traversal = "bfs", seed: int | str = 0) -> list[Vertex]:
    """Every vertex once, starting at the image vertex (those it cannot reach follow, in file order)."""
    by_id = {v.vertex_id: v for v in graph.vertices}
    root = next((v for v in graph.vertices if v.label == "image"), graph.vertices[0])
    if traversal == "topological":
        return _topological(graph, by_id)
    seen, out = {root.vertex_id}, []
    if traversal == "bfs":
        queue = deque([root])
        while queue:
            v = queue.popleft()
            out.append(v)
            for e in v.out_edges:
                if e.target in by_id and e.target not in seen:
                    seen.add(e.target)
                    queue.append(by_id[e.target])
    else:
        rng = random.Random(str(seed))
        stack = [root]
        while stack:
            v = stack.pop()
            out.append(v)
            children = [by_id[e.target] for e in v.out_edges if e.target in by_id and e.target not in seen]
            children = list({c.vertex_id: c for c in children}.values())
            if traversal == "random":
                rng.shuffle(children)
            seen.update(c.vertex_id for c in children)
            stack.extend(reversed(children))
    return out + [v for v in graph.vertices if v.vertex_id not in seen]


def _topological(graph: Graph, by_id: dict[str, Vertex]) -> list[Vertex]:
    """Kahn's order: a vertex after all its parents (ties in file order)."""
    indegree = {v.vertex_id: sum(1 for e in v.in_edges if e.source in by_id) for v in graph.vertices}
    ready = deque(v for v in graph.vertices if indegree[v.vertex_id] == 0)
    out = []
    while ready:
        v = ready.popleft()
        out.append(v)
        for e in v.out_edges:
            if e.target in indegree:
                indegree[e.target] -= 1
                if indegree[e.target] == 0:
                    ready.append(by_id[e.target])
    placed = {v.vertex_id for v in out}
    return out + [v for v in graph.vertices if v.vertex_id not in placed]  # a cycle: left in file order


def kept(caption: NodeCaption, vertex: Vertex, thresholds: dict[str, float] | None, model: str | None) -> bool:
    if not thresholds or caption.label == "hardcode":
        return True
    full = caption.full_label or f"{caption.label}-{vertex.label}"
    scores = caption.clip_scores.scores or {}
    score = scores.get(model) if model else next(iter(scores.values()), None)
    return full not in thresholds or score is None or score >= thresholds[full]


def graph_text(
    graph: Graph,
    text_format: TextFormat = "concat",
    traversal: Traversal = "bfs",
    seed: int | str = 0,
    thresholds: dict[str, float] | None = None,
    clip_model: str | None = None,
) -> str:
    vertices = order(graph, traversal, seed)
    if text_format == "structured":
        return "\n".join(_block(v, thresholds, clip_model) for v in vertices)
    lines: list[str] = []
    seen: set[str] = set()
    for v in vertices:
        for c in v.descs:
            text = " ".join(c.text.split())
            if not text or text in seen or not kept(c, v, thresholds, clip_model):
                continue
            seen.add(text)
            if text_format == "set_with_bbox":
                b = v.bbox
                text = f"[{b.left:.2f}, {b.top:.2f}, {b.right:.2f}, {b.bottom:.2f}] {text}"
            lines.append(text)
    return " ".join(lines) if text_format == "concat" else "\n".join(lines)


def _block(v: Vertex, thresholds: dict[str, float] | None, model: str | None) -> str:
    b = v.bbox
    head = f'{v.label} "{v.vertex_id}" [{b.left:.2f}, {b.top:.2f}, {b.right:.2f}, {b.bottom:.2f}]:'
    lines = [head] + [f"- {' '.join(c.text.split())}" for c in v.descs if kept(c, v, thresholds, model)]
    children = list(dict.fromkeys(e.text for e in v.out_edges))
    if children:
        lines.append("children: " + "; ".join(children))
    return "\n".join(lines)
