"""The report's parts, filled by the sections and laid out by the template."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Figure:
    id: str  # unique in the report: the browser test looks figures up by it
    title: str
    svg: str
    note: str = ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list]
    title: str = ""


@dataclass
class Tile:
    """One sample in a gallery: its thumbnail (None: no image to show) and lines about it."""

    uid: str
    image: str | None
    lines: list[str]
    texts: list[tuple[str, str]] = field(default_factory=list)  # (label, text) shown side by side


@dataclass
class Gallery:
    id: str
    title: str
    tiles: list[Tile]
    wide: bool = False  # tiles with side-by-side texts (captions) need more room


@dataclass
class Section:
    id: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
