"""The prompt templates of the four GBC queries (``captioners/prompts/gbc_*.txt``, or files of one's
own) and the fields each fills: the image query takes the experts' hints; the entity query the
phrase (``{entity}``); the relation query the most relations to name (``{count}``), the elements
(``{elements}``, bracketed) and where each pair is (hints); the composition query the group's phrase
(``{entity}``) and the spanning-tree hints.
"""

from __future__ import annotations

from captioners.hints import PromptTemplate

QUERY_FIELDS: dict[str, tuple[str, ...]] = {
    "image": (),
    "entity": ("entity",),
    "relation": ("count", "elements"),
    "composition": ("entity",),
}
DEFAULT_PROMPTS = {kind: f"gbc_{kind}" for kind in QUERY_FIELDS}


def load_prompts(names: dict[str, str] | None = None) -> dict[str, PromptTemplate]:
    """Templates by query kind; ``names`` overrides the built-in ones (a name or a file path)."""
    chosen = {**DEFAULT_PROMPTS, **(names or {})}
    return {kind: PromptTemplate.load(chosen[kind], QUERY_FIELDS[kind]) for kind in QUERY_FIELDS}


GBC_PROMPTS = load_prompts()
