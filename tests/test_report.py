"""The HTML report of a run: its sections follow the run's steps, its figures are the run's own
numbers, it is self-contained and bounded, and it loads in a real browser with no errors."""

from __future__ import annotations

import re

from report_browser import check_report

from curate.reporting import write_report
from curate.reporting.plots import slug


def _removal_reasons(stats: dict) -> set[str]:
    """Every (step, reason) the run removed samples for, as the samples view names them."""
    reasons = {f"read:{s}" for s in stats["status"] if s in ("failed_to_download", "failed_to_resize")}
    for step_id, c in stats["steps"].items():
        reasons |= {f"{step_id}:{r}" for r in (*c["dropped"], *c["failed"])}
    return reasons


def test_the_report_of_a_basic_run_shows_its_funnel_scores_and_galleries(basic_run, tmp_path):
    stats = basic_run.stats
    result = write_report(basic_run.run_dir.root, tmp_path / "report.html")
    assert result.sections == ["funnel", "scores", "galleries"]  # no CLIP, clusters, buckets or captions here
    html = result.path.read_text()
    # The funnel's table holds the run's own counters.
    for step_id in stats["steps_order"]:
        c = stats["steps"][step_id]
        assert f"<td>{step_id}</td><td>{c['in']:,}</td><td>{c['kept']:,}</td>" in html
    # Self-contained: every src and href is inline data or a link inside the page.
    assert not re.findall(r'(?:src|href)="(?!data:|#)', html)
    assert "<script src" not in html and "<link" not in html
    # A gallery per removal reason, each of at most six tiles; kept ones too.
    for reason in _removal_reasons(stats) | {"kept"}:
        assert f'id="gallery-{slug(reason)}"' in html, reason
    assert html.count('class="tile"') <= 6 * (len(_removal_reasons(stats)) + 1)
    assert result.bytes < 1_000_000


def test_the_report_loads_in_chromium_with_every_figure_and_gallery(basic_run):
    reasons = _removal_reasons(basic_run.stats)
    shown = check_report(
        basic_run.run_dir.root,
        "report-basic.png",
        sections={"funnel", "scores", "galleries"},
        figures={"fig-funnel", "fig-reasons", "fig-lang-score", "fig-image-size", "fig-aspect-ratio"},
        galleries={"gallery-kept"} | {f"gallery-{slug(r)}" for r in reasons if not r.startswith("read:")},
    )
    # Failed downloads have no image to show; every other tile has its thumbnail.
    assert shown["images"] >= 6 * len(shown["galleries"]) - 6 * 2


def test_the_demo_ends_by_writing_the_report_and_printing_its_path(ray_session, tmp_path):
    import io

    from rich.console import Console

    from curate.demo import run_demo

    out = io.StringIO()
    run_demo(tmp_path / "demo", samples=200, shard_size=100, seed=3, console=Console(file=out, width=200))
    report = tmp_path / "demo" / "run" / "report.html"
    assert f"report:  {report}" in out.getvalue()
    html = report.read_text()
    assert 'id="fig-clip-score"' in html and 'id="gallery-kept"' in html


def test_the_duckdb_cli_of_the_setup_reads_the_catalog(basic_run):
    """The README's `duckdb run/catalog.duckdb "..."` line: PyPI's duckdb-cli (1.5) opens the catalog
    that the duckdb 2.0 Python package wrote."""
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).with_name("duckdb")
    catalog = basic_run.run_dir.root / "catalog.duckdb"
    done = subprocess.run(
        [str(cli), "-csv", "-noheader", str(catalog), "select count(*) from kept"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == basic_run.stats["written"]
