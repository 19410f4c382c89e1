"""One image's graph while it is being built: vertices with ids by the rules, edges kept on both ends,
merging of re-found entities, the vertex budget, and the problems met on the way.

Boxes are normalised to the whole image. ``captioners.gbc`` drives the rounds; this module knows
nothing of models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from captioners.gbc_geometry import BoxT, overlaps_both_ways, union_box
from schemas.gbc import Box, Edge, Graph, NodeCaption, Vertex

FULL_BOX: BoxT = (0.0, 0.0, 1.0, 1.0)


@functools.cache
def _inflect_engine():
    # inflect's import takes about 3 s (typeguard instruments it); every `curate` command loads the
    # step registry, so it is imported when a GBC caption first needs it, not with the module.
    import inflect

    return inflect.engine()


def singular(text: str) -> str:
    """``blue squares`` -> ``blue square``; already singular text is returned as is."""
    return _inflect_engine().singular_noun(text) or text


def child_id(parent: str, text: str) -> str:
    return text if parent == "" else f"{parent}_{text}"


@dataclass
class Node:
    vertex_id: str
    label: str
    box: BoxT
    text: str  # the singular phrase it was found by (entities), for merging
    confidence: float | None = None
    descs: list[NodeCaption] = field(default_factory=list)
    out_edges: list[Edge] = field(default_factory=list)
    in_edges: list[Edge] = field(default_factory=list)
    depth: int = 0


@dataclass
class GraphBuilder:
    max_vertices: int
    merge_overlap: float = 0.85
    nodes: dict[str, Node] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    full: bool = False  # the vertex budget was reached

    def __post_init__(self) -> None:
        self.nodes[""] = Node("", "image", FULL_BOX, "")

    @property
    def root(self) -> Node:
        return self.nodes[""]

    def describe(self, vertex_id: str, text: str | None, label: str) -> None:
        if text:
            node = self.nodes[vertex_id]
            node.descs.append(NodeCaption(text=text, label=label, full_label=f"{label}-{node.label}"))

    def link(self, source: str, text: str, target: str) -> None:
        edge = Edge(source=source, text=text, target=target)
        if edge not in self.nodes[source].out_edges:
            self.nodes[source].out_edges.append(edge)
            self.nodes[target].in_edges.append(edge)

    def _room(self) -> bool:
        if len(self.nodes) >= self.max_vertices:
            if not self.full:
                self.problems.append(f"max_vertices ({self.max_vertices}) reached; later nodes left out")
            self.full = True
            return False
        return True

    def _similar(self, text: str, box: BoxT) -> Node | None:
        """An entity of the same singular text whose box overlaps this one both ways (the merge rule)."""
        for node in self.nodes.values():
            if node.label == "entity" and node.text == text and overlaps_both_ways(node.box, box, self.merge_overlap):
                return node
        return None

    def add_entity(self, parent: str, edge_text: str, vertex_id: str, box: BoxT, score: float) -> str | None:
        """The entity for ``box`` named ``edge_text`` by ``parent``: a new vertex, or an existing one it
        merges into (the boxes joined); None when the budget is spent or the id is taken. Returns the id
        of a *new* vertex only (merged ones are not queried again)."""
        text = singular(edge_text.rsplit(" ", 1)[0] if edge_text[-1:].isdigit() else edge_text)
        same = self._similar(text, box)
        if same is not None:
            same.box = union_box([same.box, box])
            self.link(parent, edge_text, same.vertex_id)
            return None
        if vertex_id in self.nodes:
            self.problems.append(f"vertex {vertex_id!r} found twice; the second left out")
            return None
        if not self._room():
            return None
        depth = self.nodes[parent].depth + 1
        self.nodes[vertex_id] = Node(vertex_id, "entity", box, text, confidence=score, depth=depth)
        self.link(parent, edge_text, vertex_id)
        return vertex_id

    def add_group(
        self, parent: str, phrase: str, boxes: list[BoxT], scores: list[float]
    ) -> tuple[str | None, list[str]]:
        """A phrase with several boxes: a composition vertex and one entity per box (``<id>_<k>``,
        named "<singular> <k+1>"). Returns (composition id or None, new entity ids)."""
        comp = child_id(parent, phrase)
        if comp in self.nodes or not self._room():
            if comp in self.nodes:
                self.problems.append(f"vertex {comp!r} found twice; the second left out")
            return None, []
        self.nodes[comp] = Node(
            comp, "composition", union_box(boxes), singular(phrase), depth=self.nodes[parent].depth + 1
        )
        self.link(parent, phrase, comp)
        name = singular(phrase)
        new = [
            self.add_entity(comp, f"{name} {k + 1}", f"{comp}_{k}", b, s)
            for k, (b, s) in enumerate(zip(boxes, scores, strict=True))
        ]
        return comp, [n for n in new if n is not None]

    def drop(self, vertex_id: str) -> None:
        """Remove a vertex the model said is not there, with its edges, the relations that name it, a
        composition left with no member, and the children only it led to."""
        node = self.nodes.pop(vertex_id, None)
        if node is None:
            return
        for e in node.in_edges:
            source = self.nodes.get(e.source)
            if source is not None:
                source.out_edges = [x for x in source.out_edges if x.target != vertex_id]
                if source.label == "relation" or (source.label == "composition" and not source.out_edges):
                    self.drop(source.vertex_id)
        for e in node.out_edges:
            target = self.nodes.get(e.target)
            if target is not None:
                target.in_edges = [x for x in target.in_edges if x.source != vertex_id]
                if not target.in_edges:
                    self.drop(target.vertex_id)

    def child_groups(self, vertex_id: str) -> list[tuple[str, str]]:
        """(edge text, child id) of a vertex's entity and composition children, one per child (the first
        phrase naming it: a merged child may be named twice)."""
        out: dict[str, str] = {}
        for e in self.nodes[vertex_id].out_edges:
            child = self.nodes.get(e.target)
            if child is not None and child.label in ("entity", "composition"):
                out.setdefault(e.target, e.text)
        return [(text, child) for child, text in out.items()]

    def add_relation(self, parent: str, sentence: str, named: list[tuple[str, str]]) -> None:
        """A relation caption naming children (edge text, child id) of ``parent``: the vertex
        ``[sorted child ids]`` gets it (made on first use, linked from the parent by each phrase)."""
        ids = sorted({child for _, child in named})
        if len(ids) < 2:
            self.problems.append(f"relation {sentence[:60]!r}: names one node twice, not two")
            return
        rid = "[" + "|".join(ids) + "]"
        if rid not in self.nodes:
            if not self._room():
                return
            boxes = [self.nodes[c].box for c in ids]
            self.nodes[rid] = Node(rid, "relation", union_box(boxes), "", depth=self.nodes[parent].depth + 1)
            for text, child in named:
                self.link(parent, text, rid)
                self.link(rid, text, child)
        self.describe(rid, sentence, "relation")

    def graph(self, **fields) -> Graph:
        vertices = [
            Vertex(
                vertex_id=n.vertex_id,
                bbox=Box(left=n.box[0], top=n.box[1], right=n.box[2], bottom=n.box[3], confidence=n.confidence),
                label=n.label,
                descs=n.descs,
                in_edges=n.in_edges,
                out_edges=n.out_edges,
            )
            for n in self.nodes.values()
        ]
        return Graph(vertices=vertices, **{k: v for k, v in fields.items() if v is not None})
