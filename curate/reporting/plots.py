"""Figures as inline SVG, drawn by matplotlib (Agg, no display): the report embeds the markup,
so it needs no files beside it and no network."""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
# matplotlib stamps every SVG with a creation date; without it, the same run gives the same report.
_SVG_METADATA = {"Date": None, "Creator": None}
THRESHOLD_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2")


def svg(fig) -> str:
    """The figure as an <svg> element (the XML prolog and DOCTYPE dropped so it can sit in HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata=_SVG_METADATA)
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def png_bytes(fig, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def histogram(
    values: np.ndarray | None,
    *,
    xlabel: str,
    thresholds: list[tuple[float, str]] = (),
    bins: int = 50,
    log_y: bool = False,
    series: list[tuple[np.ndarray, str]] | None = None,
) -> str:
    """A histogram of ``values`` (or of several labelled ``series`` over shared bins), with each
    threshold drawn as a labelled vertical line."""
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    groups = series if series is not None else [(values, None)]
    finite = [g[np.isfinite(g)] for g, _ in groups]
    allv = np.concatenate([f for f in finite if len(f)] or [np.zeros(1)])
    edges = np.histogram_bin_edges(allv, bins=bins)
    for vals, (_, label) in zip(finite, groups, strict=True):
        ax.hist(vals, bins=edges, alpha=0.6 if series else 0.9, label=label, color=None if series else "#4c78a8")
    for (x, label), colour in zip(thresholds, THRESHOLD_COLOURS * 4, strict=False):
        ax.axvline(x, color=colour, linestyle="--", linewidth=1.2, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    if thresholds or series:
        ax.legend(fontsize=7, frameon=False)
    return svg(fig)


def bars(
    labels: list[str],
    values: list[float],
    *,
    xlabel: str,
    horizontal: bool = True,
    annotate: bool = True,
    log: bool = False,
) -> str:
    height = max(1.6, 0.28 * len(labels) + 0.6) if horizontal else 2.6
    fig, ax = plt.subplots(figsize=(5.2, height))
    positions = np.arange(len(labels))
    if horizontal:
        ax.barh(positions, values, color="#4c78a8")
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        if log:
            ax.set_xscale("log")
        if annotate:
            for y, v in zip(positions, values, strict=True):
                ax.text(v, y, f" {v:,.0f}", va="center", fontsize=7)
    else:
        ax.bar(positions, values, color="#4c78a8")
        ax.set_xticks(
            positions, labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center"
        )
        ax.set_ylabel(xlabel)
        if log:
            ax.set_yscale("log")
    return svg(fig)


def ranked(series: list[tuple[np.ndarray, str]], *, ylabel: str, hline: tuple[float, str] | None = None) -> str:
    """Sizes sorted from largest to smallest (cluster sizes, entry counts), one line per series."""
    fig, ax = plt.subplots(figsize=(5.2, 2.6))
    for values, label in series:
        ordered = np.sort(np.asarray(values, dtype=float))[::-1]
        ax.plot(np.arange(1, len(ordered) + 1), ordered, label=label, linewidth=1.4)
    if hline is not None:
        ax.axhline(hline[0], color=THRESHOLD_COLOURS[0], linestyle="--", linewidth=1.2, label=hline[1])
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)
    return svg(fig)


_ID = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    return _ID.sub("-", text.lower()).strip("-")
