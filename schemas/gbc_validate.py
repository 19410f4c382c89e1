"""The checks every graph we write passes (``validate``: a list of problems, empty when valid).

- one root: the image vertex, id ``""``, label ``image``, the full box, no in-edges;
- ids unique and following the rules: an entity or composition vertex's id is, for one of its
  in-edges ``(source, text)``, the source's id and the text joined by ``_`` (a root child: the text)
  with an optional ``_i`` suffix, or the id of a composition it belongs to with ``_i``; a relation
  vertex's id is ``[`` + its out-edges' targets sorted and joined by ``|`` + ``]``;
- every edge is listed by both its source (``out_edges``) and its target (``in_edges``), and both
  exist;
- boxes lie in [0, 1] and inside the boxes of their entity and composition parents (within
  ``tolerance``);
- every vertex is reachable from the root and there is no cycle.
"""

from __future__ import annotations

import re

from schemas.gbc import Graph, Vertex

_SUFFIX = re.compile(r"_\d+$")


def _joined(source: str, text: str) -> str:
    return text if source == "" else f"{source}_{text}"


def _id_problems(v: Vertex, by_id: dict[str, Vertex]) -> list[str]:
    if v.label == "relation":
        return _relation_id_problems(v)
    if v.label == "image":
        return []
    bare = _SUFFIX.sub("", v.vertex_id)
    for e in v.in_edges:
        source = by_id.get(e.source)
        if source is None:
            continue
        if v.vertex_id == _joined(e.source, e.text) or bare == _joined(e.source, e.text):
            return []
        if source.label == "composition" and bare == e.source:
            return []
    return [
        f"{v.label} {v.vertex_id!r}: id follows from none of its in-edges {[(e.source, e.text) for e in v.in_edges]}"
    ]


def _relation_id_problems(v: Vertex) -> list[str]:
    """``[a|b]``: its targets' ids sorted; a target merged into a node found elsewhere may keep the id
    its parent gave it (parent id joined with the phrase), as ml-gbc's own graphs do."""
    expected = "[" + "|".join(sorted(e.target for e in v.out_edges)) + "]"
    if v.vertex_id == expected:
        return []
    parts = v.vertex_id[1:-1].split("|") if v.vertex_id.startswith("[") and v.vertex_id.endswith("]") else []
    named = {e.target for e in v.out_edges} | {_joined(e.source, e.text) for e in v.in_edges}
    if parts == sorted(parts) and len(parts) == len(v.out_edges) and all(p in named for p in parts):
        return []
    return [f"relation {v.vertex_id!r}: id should be {expected!r}"]


def validate(graph: Graph, tolerance: float = 0.02) -> list[str]:
    problems: list[str] = []
    by_id: dict[str, Vertex] = {}
    for v in graph.vertices:
        if v.vertex_id in by_id:
            problems.append(f"vertex id {v.vertex_id!r} is used twice")
        by_id[v.vertex_id] = v
    roots = [v for v in graph.vertices if v.label == "image"]
    if len(roots) != 1:
        return problems + [f"{len(roots)} image vertices; a graph has exactly one root"]
    root = roots[0]
    if root.vertex_id != "":
        problems.append(f"the image vertex's id is {root.vertex_id!r}, not ''")
    if root.in_edges:
        problems.append("the image vertex has in-edges")
    b = root.bbox
    if (b.left, b.top, b.right, b.bottom) != (0.0, 0.0, 1.0, 1.0):
        problems.append("the image vertex's box is not the full image")
    for v in graph.vertices:
        box = v.bbox
        if not all(0.0 <= x <= 1.0 for x in (box.left, box.top, box.right, box.bottom)):
            problems.append(f"{v.vertex_id!r}: box {box.left, box.top, box.right, box.bottom} is outside [0, 1]")
        elif box.left > box.right or box.top > box.bottom:
            problems.append(f"{v.vertex_id!r}: box has left > right or top > bottom")
        problems += _edge_problems(v, by_id, outgoing=True)
        problems += _edge_problems(v, by_id, outgoing=False)
        for e in v.in_edges:
            source = by_id.get(e.source)
            if source is None or e.target != v.vertex_id or e not in source.out_edges:
                continue
            if source.label in ("entity", "composition") and v.label in ("entity", "composition"):
                p = source.bbox
                inside = (
                    box.left >= p.left - tolerance
                    and box.top >= p.top - tolerance
                    and box.right <= p.right + tolerance
                    and box.bottom <= p.bottom + tolerance
                )
                if not inside and not _merged(v, by_id):
                    problems.append(f"{v.vertex_id!r}: box is not inside its parent {source.vertex_id!r}'s box")
        problems += _id_problems(v, by_id)
    problems += _reach_problems(root, by_id)
    return problems


def _edge_problems(v: Vertex, by_id: dict[str, Vertex], outgoing: bool) -> list[str]:
    """Each out-edge (or in-edge) of ``v`` starts (ends) at ``v`` and is listed by its other end too."""
    here, there, side, other_side = ("source", "target", "out", "in") if outgoing else ("target", "source", "in", "out")
    problems = []
    for e in v.out_edges if outgoing else v.in_edges:
        other = by_id.get(getattr(e, there))
        if getattr(e, here) != v.vertex_id:
            problems.append(f"{v.vertex_id!r}: {side}-edge {e.source!r} -> {e.target!r} is not {v.vertex_id!r}'s")
        elif other is None:
            problems.append(f"{v.vertex_id!r}: {side}-edge {e.source!r} -> {e.target!r} names a missing vertex")
        elif e not in (other.in_edges if outgoing else other.out_edges):
            name = "target" if outgoing else "source"
            problems.append(
                f"edge {e.source!r} -> {e.target!r} ({e.text!r}) is not among the {name}'s {other_side}-edges"
            )
    return problems


def _merged(v: Vertex, by_id: dict[str, Vertex]) -> bool:
    """A node with several non-relation parents was merged: its box is the union of what each saw."""
    return sum(1 for e in v.in_edges if e.source in by_id and by_id[e.source].label != "relation") > 1


def _reach_problems(root: Vertex, by_id: dict[str, Vertex]) -> list[str]:
    """Unreachable vertices and cycles, by a depth-first walk of the out-edges."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    problems: list[str] = []
    stack: list[tuple[str, int]] = [(root.vertex_id, 0)]
    while stack:
        vid, k = stack.pop()
        if k == 0:
            state[vid] = 1
        edges = by_id[vid].out_edges
        if k < len(edges):
            stack.append((vid, k + 1))
            nxt = edges[k].target
            if nxt not in by_id:
                continue
            if state.get(nxt) == 1:
                problems.append(f"cycle through {vid!r} -> {nxt!r}")
            elif nxt not in state:
                stack.append((nxt, 0))
        else:
            state[vid] = 2
    unreached = sorted(set(by_id) - set(state))
    if unreached:
        problems.append(f"vertices not reachable from the image: {unreached[:5]}")
    return problems
