"""``curate report RUN``: one self-contained HTML file about a finished run (no server, no CDN:
figures are inline SVG drawn by matplotlib, thumbnails are data: URIs, the one script is inline).

Sections appear only for what the run has: the funnel always, then score distributions, clusters,
length buckets, captions, GBC graphs and galleries. It summarises and never embeds every row: its
size is bounded by the number of steps and drop reasons, not by the number of samples.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from curate.reporting import samples, selection
from curate.reporting.facts import RunFacts

# In the order they appear; each returns None when the run has nothing for it.
SECTIONS = (
    selection.funnel,
    selection.scores,
    selection.clusters,
    selection.buckets,
    samples.captions,
    samples.gbc_graphs,
    samples.galleries,
)


@dataclass
class ReportResult:
    path: Path
    bytes: int
    seconds: float
    sections: list[str]


def render_report(facts: RunFacts) -> tuple[str, list[str]]:
    sections = [s for s in (build(facts) for build in SECTIONS) if s is not None]
    env = Environment(loader=PackageLoader("curate.reporting", "."), autoescape=select_autoescape(["html"]))
    stats = facts.stats
    finished = datetime.datetime.fromtimestamp(facts.run.stats.stat().st_mtime)
    subtitle = (
        f"{facts.run.root} · recipe {stats.get('recipe')!r} · {stats['rows']:,} samples in, "
        f"{stats['written']:,} written · finished {finished:%Y-%m-%d %H:%M}"
    )
    html = env.get_template("template.html").render(title=stats.get("recipe"), subtitle=subtitle, sections=sections)
    return html, [s.id for s in sections]


def write_report(run_root: str | os.PathLike, output: str | os.PathLike | None = None) -> ReportResult:
    started = time.perf_counter()
    facts = RunFacts(run_root)
    try:
        html, ids = render_report(facts)
    finally:
        facts.close()
    path = Path(output) if output else facts.run.root / "report.html"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return ReportResult(path, path.stat().st_size, time.perf_counter() - started, ids)
