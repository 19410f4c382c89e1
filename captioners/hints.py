"""Perception hints for the dense captioner (DenseFusion's perceptual fusion): what the experts found,
serialised into the prompt, and the prompt templates with their versions.

A hint block is one line per expert that has something to say, in a fixed order::

    Detection Information: circle: [0.353, 0.096, 0.892, 0.991]; star: [0.1, 0.2, 0.3, 0.4]
    Text Information: "COFFEE"
    Image Tags: red circle, striped
    World Knowledge: a red circle on a striped background

The same function builds the hints the tiny MLLM was trained with (scripts/train_tiny_llava.py) and
the hints the ``dense_caption`` step gives it, so a model sees at inference what it learnt on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
HINT_KINDS = ("detections", "text", "tags", "alt_text")


@dataclass(frozen=True)
class Hints:
    """What the experts found in one image (any part may be missing)."""

    boxes: list[list[float]] | None = None
    labels: list[str] | None = None
    texts: list[str] | None = None
    tags: list[str] | None = None
    alt_text: str | None = None

    def lines(self, kinds: tuple[str, ...] = HINT_KINDS, max_boxes: int = 10) -> list[str]:
        out = []
        if "detections" in kinds and self.labels:
            pairs = list(zip(self.labels, self.boxes or [], strict=False))[:max_boxes]
            found = "; ".join(f"{label}: [{', '.join(f'{v:.2f}' for v in box)}]" for label, box in pairs)
            out.append(f"Detection Information: {found}")
        if "text" in kinds and self.texts:
            out.append("Text Information: " + ", ".join(f'"{t}"' for t in self.texts))
        if "tags" in kinds and self.tags:
            out.append("Image Tags: " + ", ".join(self.tags))
        if "alt_text" in kinds and self.alt_text and self.alt_text.strip():
            out.append(f"World Knowledge: {' '.join(self.alt_text.split())}")
        return out


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt file with a ``{hints}`` slot, and any ``fields`` its query fills (``{entity}``); ``version``
    is the hash of its text (goes to the metadata)."""

    name: str
    text: str

    @classmethod
    def load(cls, value: str, fields: tuple[str, ...] = ()) -> PromptTemplate:
        """A built-in template by name (``dense_caption``) or a file path."""
        path = Path(value).expanduser()
        if not path.is_file():
            path = PROMPTS_DIR / f"{value}.txt"
        if not path.is_file():
            builtin = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
            raise ValueError(f"prompt: value {value!r} is neither a file nor a built-in prompt ({builtin})")
        text = path.read_text(encoding="utf-8")
        if text.count("{hints}") != 1:
            raise ValueError(f"prompt: {path} must contain {{hints}} exactly once (where the hints go)")
        for name in fields:
            if "{" + name + "}" not in text:
                raise ValueError(f"prompt: {path} must contain {{{name}}} (where the query puts it)")
        return cls(path.stem, text)

    @property
    def version(self) -> str:
        return f"{self.name}@{hashlib.sha256(self.text.encode()).hexdigest()[:12]}"

    def render(self, hint_lines: list[str], **fields: str) -> str:
        block = "\n".join(hint_lines) if hint_lines else "No hints."
        text = self.text
        for name, value in fields.items():
            text = text.replace("{" + name + "}", value)
        return text.replace("{hints}", block).strip()


def parse_answer(text: str) -> tuple[str | None, str | None]:
    """(description, caption) from a "Description: ...\\nCaption: ..." answer; None where missing."""
    description = caption = None
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        key = head.strip().lower()
        if key == "description" and rest.strip():
            description = rest.strip()
        elif key == "caption" and rest.strip():
            caption = rest.strip()
    return description, caption
