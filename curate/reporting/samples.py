"""Sections that show samples: captions before and after captioning, GBC graphs drawn over their
images, and galleries of kept and dropped samples per reason. The tiles are a few samples per
group, chosen by uid order (uids are hashes, so this is a fixed, unbiased draw), which bounds the
report's size whatever the run's."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from curate.reporting import images, plots
from curate.reporting.facts import RunFacts
from curate.reporting.model import Figure, Gallery, Section, Table, Tile
from curate.stepkit import quote_identifier

TILES_PER_GROUP = 6
MAX_GROUPS = 24
GRAPHS_SHOWN = 4
TEXT_CHARS = 400
_IMAGE_COLUMNS = ("uid", "key", "shard_index", "row_in_shard", "image_offset", "image_size")


def _sample_rows(f: RunFacts, where: str, extra: list[str], limit: int, order: str = "uid") -> pa.Table:
    cols = [c for c in (*_IMAGE_COLUMNS, *extra) if f.has(c)]
    names = ", ".join(quote_identifier(c) for c in cols)
    sql = f"SELECT {names} FROM samples WHERE {where} ORDER BY {order} LIMIT {limit}"
    return f.con.sql(sql).to_arrow_table()


def _cut(text, n: int = TEXT_CHARS) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def caption_columns(f: RunFacts) -> list[tuple[str, str, str | None]]:
    """(step id, new caption column, hints column) for each captioning step of the run."""
    out = []
    for step in f.steps_named("dense_caption"):
        prefix = f.param(step, "prefix")
        out.append((step.step_id, f"{prefix}_caption", f"{prefix}_hints"))
    for step in f.steps_named("gbc_caption"):
        out.append((step.step_id, f"{f.param(step, 'prefix')}_text", None))
    return [c for c in out if f.has(c[1])]


def _words(f: RunFacts, column: str) -> np.ndarray:
    col = quote_identifier(column)
    sql = f"SELECT len(string_split(trim({col}), ' '))::DOUBLE AS v FROM samples WHERE keep AND {col} IS NOT NULL"
    return np.asarray(f.con.execute(sql).fetchnumpy()["v"], dtype=np.float64)


def captions(f: RunFacts) -> Section | None:
    columns = caption_columns(f)
    if not columns:
        return None
    section = Section("captions", "Captions before and after captioning")
    series = [(_words(f, "caption"), "original caption (kept samples)")]
    series += [(_words(f, col), f"{col} ({step_id})") for step_id, col, _ in columns]
    section.figures.append(
        Figure("fig-caption-lengths", "caption length in words", plots.histogram(None, xlabel="words", series=series))
    )
    lengths = Table(["caption", "samples", "mean words", "median words"], [])
    for values, label in series:
        if len(values):
            lengths.rows.append([label, len(values), f"{values.mean():.1f}", f"{np.median(values):.0f}"])
    section.tables.append(lengths)
    for step_id, col, hints in columns:
        rows = _sample_rows(
            f, f"keep AND {quote_identifier(col)} IS NOT NULL", ["caption", col, hints or ""], TILES_PER_GROUP
        )
        data = f.images.fetch(rows)
        tiles = []
        for i, row in enumerate(rows.to_pylist()):
            texts = [("original", _cut(row.get("caption"))), (col, _cut(row.get(col)))]
            if hints and row.get(hints):
                texts.append(("hints", _cut(" | ".join(row[hints]))))
            tiles.append(Tile(row["uid"], images.thumbnail(data[i]), [row["uid"][:12]], texts))
        section.galleries.append(
            Gallery(f"gallery-captions-{plots.slug(step_id)}", f"{step_id}: side by side", tiles, wide=True)
        )
    return section


def gbc_graphs(f: RunFacts) -> Section | None:
    steps = [(s.step_id, f"{f.param(s, 'prefix')}_graph") for s in f.steps_named("gbc_caption")]
    steps = [(sid, col) for sid, col in steps if f.has(col)]
    if not steps:
        return None
    section = Section("gbc", "GBC graphs")
    for step_id, col in steps:
        q = quote_identifier(col)
        labels = f.rows(
            f"SELECT json_extract_string(v, '$.label') AS label, count(*) AS n FROM (SELECT unnest("
            f"json_extract({q}, '$.vertices[*]')) AS v FROM samples WHERE keep AND {q} IS NOT NULL) "
            "GROUP BY ALL ORDER BY n DESC"
        )
        if labels:
            section.figures.append(
                Figure(
                    f"fig-{plots.slug(step_id)}-labels",
                    f"{step_id}: vertices by kind",
                    plots.bars([r["label"] for r in labels], [r["n"] for r in labels], xlabel="vertices"),
                )
            )
        order = f"json_array_length(json_extract({q}, '$.vertices')) DESC, uid"
        rows = _sample_rows(f, f"keep AND {q} IS NOT NULL", [col, "caption"], GRAPHS_SHOWN, order=order)
        data = f.images.fetch(rows)
        tiles = []
        for i, row in enumerate(rows.to_pylist()):
            graph = json.loads(row[col])
            lines = [_vertex_line(v) for v in graph.get("vertices", [])[:8]]
            tiles.append(Tile(row["uid"], images.draw_graph(data[i], graph), [row["uid"][:12], *lines]))
        section.galleries.append(
            Gallery(f"gallery-{plots.slug(step_id)}", f"{step_id}: graphs over their images", tiles, wide=True)
        )
    return section


def _vertex_line(vertex: dict) -> str:
    text = "; ".join(d.get("text", "") for d in vertex.get("descs", []))
    return f"{vertex['vertex_id']} [{vertex.get('label')}]: {_cut(text, 140)}"


def _tile(row: dict, data: bytes | None, reason: str | None) -> Tile:
    lines = [_cut(row.get("caption"), 120) or "(no caption)"]
    if row.get("clip_score") is not None:
        lines.append(f"clip_score {row['clip_score']:.3f}")
    if reason:
        lines.append(reason)
    if row.get("error_message"):
        lines.append(_cut(row["error_message"], 100))
    return Tile(row["uid"], images.thumbnail(data), lines)


def galleries(f: RunFacts) -> Section:
    section = Section("galleries", "Galleries: kept samples and dropped ones by reason")
    extra = ["caption", "clip_score", "drop_reason", "status", "error_message"]
    groups = [("kept", "keep", "kept")]
    reasons = f.rows(
        "SELECT coalesce(drop_reason, status) AS reason, count(*) AS n FROM samples WHERE NOT keep GROUP BY ALL "
        "ORDER BY n DESC, reason"
    )
    for r in reasons[:MAX_GROUPS]:
        literal = str(r["reason"]).replace("'", "''")
        groups.append(
            (
                f"dropped: {r['reason']} ({r['n']:,})",
                f"NOT keep AND coalesce(drop_reason, status) = '{literal}'",
                r["reason"],
            )
        )
    if len(reasons) > MAX_GROUPS:
        section.notes.append(f"{len(reasons) - MAX_GROUPS} more reasons are not shown (curate query lists them all)")
    for title, where, reason in groups:
        rows = _sample_rows(f, where, extra, TILES_PER_GROUP)
        data = f.images.fetch(rows)
        tiles = [_tile(row, data[i], None if reason == "kept" else reason) for i, row in enumerate(rows.to_pylist())]
        section.galleries.append(Gallery(f"gallery-{plots.slug(reason)}", title, tiles))
    return section
