"""Reading the MLLM's answers to the four GBC queries, degrading gracefully.

Each parser returns what it could read and a list of ``problems`` (why part of an answer was not
used): a malformed answer gives a smaller graph and a recorded reason, never an exception. The rules
follow apple/ml-gbc where it has them:

- a detectable phrase is written ``[phrase][single]`` or ``[phrase][multiple]`` (the bracket pattern
  below); parts may also be listed as ``- wheels: [multiple]``;
- phrases are lowercased; a trailing number ("dog 2") or "on the left/right" means the answer was
  naming one of several, so the qualifier is dropped and the phrase becomes ``multiple``;
- phrases unfit for a detector are rejected: positional words, pure digits, ``_`` (ids are joined
  with it), empty or over ``MAX_PHRASE_WORDS`` words;
- a phrase is kept only if it occurs in one of the answer's captions (an edge's text is a phrase of
  its source's captions);
- a phrase named twice is kept once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BRACKETS = re.compile(r"\[([^\]]+)\]\s*\[([^\]]+)\]")
_COLON_PART = re.compile(r"^\s*[-*]\s*([^:\[\]]+?)\s*:\s*\[([^\]]+)\]")
_QUALIFIER = re.compile(r"\s+(?:\d+|on the (?:left|right)|(?:at|in) the (?:left|right))$")
_HEADER = re.compile(r"^[\s#*]*([A-Za-z][A-Za-z -]*?)\s*:\s*\**\s*(.*)$")
POSITIONAL = frozenset(
    [
        "left",
        "right",
        "top",
        "bottom",
        "center",
        "centre",
        "middle",
        "front",
        "back",
        "side",
        "foreground",
        "background",
        "above",
        "below",
        "upper",
        "lower",
        "corner",
        "edge",
        "near",
        "far",
    ]
)
MAX_PHRASE_WORDS = 6
MAX_PARTS = 10
MAX_ENTITY_WORDS = 50


@dataclass(frozen=True)
class Phrase:
    text: str  # lowercased, as it names the child in its parent's captions
    multiple: bool


@dataclass
class ImageAnswer:
    detail: str | None = None
    short: str | None = None  # the concise caption with the brackets taken out
    elements: list[Phrase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class EntityAnswer:
    present: bool = False
    detail: str | None = None
    parts: list[Phrase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class CompositionAnswer:
    composition: str | None = None
    general: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class RelationAnswer:
    relations: list[tuple[str, list[str]]] = field(default_factory=list)  # (sentence, element texts named)
    problems: list[str] = field(default_factory=list)


def _sections(text: str, names: dict[str, str]) -> dict[str, list[str]]:
    """Lines of ``text`` under each known header (``names``: lowercased header -> key). Text on the
    header's own line is the section's first line. Lines before any header go to ``""``."""
    out: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        match = _HEADER.match(raw)
        key = names.get(match.group(1).strip().lower()) if match else None
        if key is not None:
            current = key
            out.setdefault(current, [])
            rest = match.group(2).strip().strip("*").strip()
            if rest:
                out[current].append(rest)
        elif raw.strip():
            out.setdefault(current, []).append(raw.strip())
    return out


def strip_brackets(text: str) -> str:
    """``A [red circle][single] here`` -> ``A red circle here``."""
    return " ".join(BRACKETS.sub(lambda m: m.group(1), text).split())


def clean_phrase(raw: str, kind: str) -> tuple[Phrase | None, str | None]:
    """(phrase, None) or (None, why it was rejected)."""
    text = " ".join(raw.lower().split()).strip(" .,;:'\"")
    multiple = kind.strip().lower().startswith("multiple")
    if not kind.strip().lower().startswith(("single", "multiple")):
        return None, f"phrase {raw!r}: type {kind!r} is neither single nor multiple"
    qualified = _QUALIFIER.sub("", text)
    if qualified != text:
        text, multiple = qualified, True
    words = text.split()
    if not words:
        return None, f"phrase {raw!r}: empty"
    if "_" in text:
        return None, f"phrase {raw!r}: '_' is not allowed (it joins vertex ids)"
    if text.isdigit() or all(w in POSITIONAL for w in words):
        return None, f"phrase {raw!r}: not a detectable object"
    if len(words) > MAX_PHRASE_WORDS:
        return None, f"phrase {raw!r}: more than {MAX_PHRASE_WORDS} words"
    return Phrase(text, multiple), None


def occurs(phrase: str, texts: list[str | None]) -> bool:
    pattern = re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.IGNORECASE)
    return any(t and pattern.search(t) for t in texts)


def _collect(
    candidates: list[tuple[str, str]], captions: list[str | None], problems: list[str], limit: int
) -> list[Phrase]:
    """Cleaned, de-duplicated phrases that occur in ``captions``, at most ``limit``."""
    kept: dict[str, Phrase] = {}
    for raw, kind in candidates:
        phrase, why = clean_phrase(raw, kind)
        if phrase is None:
            problems.append(why)
            continue
        if phrase.text in kept:
            if phrase.multiple and not kept[phrase.text].multiple:
                kept[phrase.text] = phrase  # "dog 1" and "dog 2": several of them
            continue
        if not occurs(phrase.text, captions):
            problems.append(f"phrase {phrase.text!r}: not in any caption")
            continue
        kept[phrase.text] = phrase
    if len(kept) > limit:
        problems.append(f"{len(kept)} phrases, kept the first {limit}")
    return list(kept.values())[:limit]


def _bracket_problems(text: str, problems: list[str]) -> None:
    if text.count("[") != text.count("]"):
        problems.append(f"unbalanced brackets ({text.count('[')} '[' and {text.count(']')} ']')")


def _joined(lines: list[str] | None) -> str | None:
    text = " ".join(" ".join(lines or []).split())
    return text or None


_IMAGE_SECTIONS = {
    "detailed caption": "detail",
    "top-level element identification": "elements",
    "top level element identification": "elements",
    "concise formatted caption": "concise",
}


def parse_image_answer(text: str, max_elements: int = 10) -> ImageAnswer:
    out = ImageAnswer()
    sections = _sections(text or "", _IMAGE_SECTIONS)
    for key, header in (("detail", "Detailed Caption"), ("concise", "Concise Formatted Caption")):
        if not sections.get(key):
            out.problems.append(f"no {header} section")
    if "elements" not in sections:
        out.problems.append("no Top-Level Element Identification section")
    concise = _joined(sections.get("concise"))
    out.detail = _joined(sections.get("detail"))
    if not set(sections) - {""}:
        out.problems = ["no section headers at all: " + repr((text or "")[:80])]
    out.short = strip_brackets(concise) if concise else None
    candidates: list[tuple[str, str]] = []
    for line in sections.get("elements", []) + ([concise] if concise else []):
        _bracket_problems(line, out.problems)
        candidates += BRACKETS.findall(line)
    out.elements = _collect(candidates, [out.detail, out.short], out.problems, max_elements)
    return out


_ENTITY_SECTIONS = {"object present": "present", "detailed caption": "detail", "prominent features": "features"}


def _yes(lines: list[str] | None) -> bool | None:
    word = (lines or [""])[0].strip().lower()
    if word.startswith("yes"):
        return True
    if word.startswith("no"):
        return False
    return None


def parse_entity_answer(text: str, entity: str) -> EntityAnswer:
    out = EntityAnswer()
    sections = _sections(text or "", _ENTITY_SECTIONS)
    present = _yes(sections.get("present"))
    detail = _joined(sections.get("detail"))
    if present is None:
        out.problems.append("no Object Present: Yes/No line")
        present = detail is not None  # a description of it says it is there
    out.present = present
    if not present:
        return out
    if detail is None:
        out.problems.append("no Detailed Caption section")
    elif len(detail.split()) > MAX_ENTITY_WORDS:
        out.problems.append(f"caption of {len(detail.split())} words, cut to {MAX_ENTITY_WORDS}")
        detail = " ".join(detail.split()[:MAX_ENTITY_WORDS])
    out.detail = detail
    features = sections.get("features", [])
    flag = _yes(features[:1])
    if flag is False:
        return out
    candidates: list[tuple[str, str]] = []
    for line in features[1:] if flag else features:
        _bracket_problems(line, out.problems)
        colon = _COLON_PART.match(line)
        candidates += [colon.groups()] if colon else BRACKETS.findall(line)
    # A part named as the entity itself is the entity, not a part of it (ml-gbc drops it too).
    candidates = [(t, k) for t, k in candidates if t.strip().lower() != entity.lower()]
    out.parts = _collect(candidates, [detail], out.problems, MAX_PARTS)
    return out


_COMPOSITION_SECTIONS = {"composition": "composition", "general descriptions": "general"}


def parse_composition_answer(text: str) -> CompositionAnswer:
    out = CompositionAnswer()
    sections = _sections(text or "", _COMPOSITION_SECTIONS)
    out.composition = _joined([line for line in sections.get("composition", []) if not line.startswith("-")])
    if out.composition is None:
        out.problems.append("no Composition section")
    out.general = [
        line.lstrip("-* ").strip() for line in sections.get("general", []) if line.lstrip().startswith(("-", "*"))
    ]
    out.general = [g for g in dict.fromkeys(out.general) if g]
    return out


def parse_relation_answer(text: str, elements: list[str], max_relations: int) -> RelationAnswer:
    """Bullet lines naming at least two of ``elements`` (in brackets or in plain words)."""
    out = RelationAnswer()
    seen: set[str] = set()
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line.startswith(("-", "*")):
            continue
        sentence = re.sub(r"\[([^\]]+)\]", r"\1", strip_brackets(line.lstrip("-* ").strip()))
        if not sentence:
            continue
        named = [e for e in elements if occurs(e, [sentence])]
        if len(named) < 2:
            out.problems.append(f"relation {sentence[:60]!r}: names fewer than two elements")
            continue
        if sentence.lower() in seen:
            continue
        seen.add(sentence.lower())
        out.relations.append((sentence, named))
    if not out.relations and not out.problems:
        out.problems.append("no relation lines")
    if len(out.relations) > max_relations:
        out.problems.append(f"{len(out.relations)} relations, kept the first {max_relations}")
        out.relations = out.relations[:max_relations]
    return out
