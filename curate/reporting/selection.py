"""Sections about what was selected: the funnel, score distributions with their thresholds,
clusters (MoDE, SemDeDup, MetaCLIP) and length buckets. Each returns None when the run has
nothing for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.reporting import plots
from curate.reporting.facts import RunFacts
from curate.reporting.model import Figure, Section, Table
from curate.stepkit import quote_identifier

READ_FAILURES = ("failed_to_download", "failed_to_resize")


def funnel(f: RunFacts) -> Section:
    stats = f.stats
    read_failed = sum(stats["status"].get(s, 0) for s in READ_FAILURES)
    labels, left = ["input", "read"], [stats["rows"], stats["rows"] - read_failed]
    table = Table(["step", "in", "kept", "dropped", "failed"], [])
    reasons = Table(["step", "outcome", "reason", "samples"], [])
    for status in READ_FAILURES:
        if stats["status"].get(status):
            reasons.rows.append(["read", "failed", status, stats["status"][status]])
    for step_id in stats.get("steps_order", []):
        c = stats["steps"].get(step_id, {"in": 0, "kept": 0, "dropped": {}, "failed": {}})
        table.rows.append([step_id, c["in"], c["kept"], sum(c["dropped"].values()), sum(c["failed"].values())])
        labels.append(step_id)
        left.append(c["kept"])
        for outcome in ("dropped", "failed"):
            for reason, n in sorted(c[outcome].items(), key=lambda kv: -kv[1]):
                reasons.rows.append([step_id, outcome, reason, n])
    labels.append("written")
    left.append(stats["written"])
    section = Section("funnel", "Funnel: samples in, kept, dropped and failed")
    section.figures.append(
        Figure("fig-funnel", "samples left after each step", plots.bars(labels, left, xlabel="samples"))
    )
    if reasons.rows:
        section.figures.append(
            Figure(
                "fig-reasons",
                "samples removed, by step and reason",
                plots.bars([f"{r[0]}: {r[2]}" for r in reasons.rows], [r[3] for r in reasons.rows], xlabel="samples"),
            )
        )
    section.tables += [table, reasons] if reasons.rows else [table]
    section.notes.append(
        f"{stats['rows']:,} samples in, {stats['written']:,} written to {stats['shards']} shards "
        f"({stats['written'] / max(stats['rows'], 1):.1%})."
    )
    return section


def _clip_thresholds(f: RunFacts, column: str) -> list[tuple[float, str]]:
    out = []
    for step in f.steps_named("clip_fraction"):
        state = f.states.get(step.step_id) or {}
        if f.param(step, "score_column") == column and state.get("threshold") is not None:
            frac = f.param(step, "fraction")
            out.append((float(state["threshold"]), f"{step.step_id}: top {frac:.0%} ({state['threshold']:.3f})"))
    for step in f.steps_named("clip_score"):
        if f.param(step, "score_column") == column:
            out.append((float(f.param(step, "threshold")), f"{step.step_id} >= {f.param(step, 'threshold')}"))
    return out


def scores(f: RunFacts) -> Section | None:
    section = Section("scores", "Score distributions and thresholds")
    score_columns = {f.param(s, "score_column") for s in f.steps_named("clip_fraction", "clip_score")}
    score_columns |= {"clip_score"} if f.has("clip_score") else set()
    for column in sorted(c for c in score_columns if f.has(c)):
        values = f.values(column)
        if len(values):
            section.figures.append(
                Figure(
                    f"fig-{plots.slug(column)}",
                    f"{column} (samples that have one: {len(values):,})",
                    plots.histogram(values, xlabel=column, thresholds=_clip_thresholds(f, column)),
                )
            )
    basics = f.steps_named("basic")
    if f.has("lang_score"):
        values = f.values("lang_score")
        langs = f.rows("SELECT lang, count(*) AS n FROM samples WHERE lang IS NOT NULL GROUP BY lang ORDER BY n DESC")
        top = ", ".join(f"{r['lang']} {r['n']:,}" for r in langs[:6])
        wanted = [f.param(s, "language") for s in basics]
        note = f"languages: {top}; basic keeps language {wanted[0]!r}" if wanted and wanted[0] else f"languages: {top}"
        section.figures.append(
            Figure(
                "fig-lang-score", "language confidence (fastText)", plots.histogram(values, xlabel="lang_score"), note
            )
        )
    if f.has("min_side"):
        thresholds = [
            (float(f.param(s, "min_side")), f"{s.step_id}: min_side {f.param(s, 'min_side')}") for s in basics
        ]
        section.figures.append(
            Figure(
                "fig-image-size",
                "image size: shorter side in pixels",
                plots.histogram(f.values("min_side"), xlabel="shorter side (px)", thresholds=thresholds, log_y=True),
            )
        )
    if f.has("aspect_ratio"):
        thresholds = [
            (float(f.param(s, "max_aspect_ratio")), f"{s.step_id}: max {f.param(s, 'max_aspect_ratio')}")
            for s in basics
        ]
        section.figures.append(
            Figure(
                "fig-aspect-ratio",
                "aspect ratio (longer / shorter side)",
                plots.histogram(f.values("aspect_ratio"), xlabel="aspect ratio", thresholds=thresholds, log_y=True),
            )
        )
    return section if section.figures else None


def _spread_rows(name: str, spread: dict) -> list:
    return [name, *(spread.get(k) for k in ("min", "max", "mean", "cv", "max_over_mean", "empty"))]


def clusters(f: RunFacts) -> Section | None:
    section = Section("clusters", "Clusters")
    for step in f.steps_named("mode"):
        prefix = f.param(step, "prefix")
        fine, expert = f"{prefix}_fine", f"{prefix}_expert"
        if not f.has(fine, expert):
            continue
        sizes = f.rows(
            f"SELECT {quote_identifier(fine)} AS c, count(*) AS n FROM samples WHERE {quote_identifier(fine)} "
            "IS NOT NULL GROUP BY ALL"
        )
        experts = f.rows(
            f"SELECT {quote_identifier(expert)} AS e, count(*) AS n FROM samples WHERE "
            f"{quote_identifier(expert)} IS NOT NULL GROUP BY ALL ORDER BY e"
        )
        section.figures.append(
            Figure(
                f"fig-{plots.slug(step.step_id)}-fine",
                f"{step.step_id}: fine cluster sizes",
                plots.ranked([(np.array([r["n"] for r in sizes]), "samples per fine cluster")], ylabel="samples"),
            )
        )
        section.figures.append(
            Figure(
                f"fig-{plots.slug(step.step_id)}-experts",
                f"{step.step_id}: samples per data expert (coarse cluster)",
                plots.bars([f"expert {r['e']}" for r in experts], [r["n"] for r in experts], xlabel="samples"),
            )
        )
        state = f.states.get(step.step_id) or {}
        balance = Table(
            ["fine sizes by", "min", "max", "mean", "cv", "max/mean", "empty"], [], title=f"{step.step_id}: balance"
        )
        for key in ("fine_sizes_capacity", "fine_sizes_priced", "fine_sizes_nearest"):
            if isinstance(state.get(key), dict):
                balance.rows.append(_spread_rows(key.removeprefix("fine_sizes_"), state[key]))
        if balance.rows:
            section.tables.append(balance)
    for step in f.steps_named("semdedup"):
        state = f.states.get(step.step_id) or {}
        by_eps = state.get("removed_by_eps") or {}
        if by_eps:
            section.figures.append(
                Figure(
                    f"fig-{plots.slug(step.step_id)}-eps",
                    f"{step.step_id}: samples removed per eps (run at eps "
                    f"{state.get('eps')}: {state.get('removed')} removed)",
                    plots.bars([f"eps {e}" for e in by_eps], list(by_eps.values()), xlabel="samples removed"),
                )
            )
        path = state.get("annotations")
        if path and Path(path).exists():
            cl = pq.read_table(path, columns=["cluster"])["cluster"].to_numpy()
            section.figures.append(
                Figure(
                    f"fig-{plots.slug(step.step_id)}-clusters",
                    f"{step.step_id}: k-means cluster sizes",
                    plots.ranked([(np.bincount(cl), "samples per cluster")], ylabel="samples"),
                )
            )
    for step in f.steps_named("metaclip"):
        state = f.states.get(step.step_id) or {}
        entries_col = f"{f.param(step, 'prefix')}_entries"
        path = state.get("entry_counts")
        if not path or not Path(path).exists() or not f.has(entries_col):
            continue
        before = pq.read_table(path, columns=["count"])["count"].to_numpy()
        after = f.rows(
            f"SELECT e, count(*) AS n FROM (SELECT unnest({quote_identifier(entries_col)}) AS e FROM samples "
            "WHERE keep) GROUP BY e"
        )
        t = state.get("t")
        section.figures.append(
            Figure(
                f"fig-{plots.slug(step.step_id)}-entries",
                f"{step.step_id}: matches per entry before and after "
                "balancing (head entries are sub-sampled to about t)",
                plots.ranked(
                    [(before[before > 0], "before (pool)"), (np.array([r["n"] for r in after]), "after (kept)")],
                    ylabel="matches",
                    hline=(t, f"t = {t}") if t else None,
                ),
            )
        )
        section.tables.append(
            Table(
                ["entries", "head (> t)", "matched rows", "unmatched rows"],
                [
                    [
                        state.get("entries"),
                        state.get("head_entries"),
                        state.get("matched_rows"),
                        state.get("unmatched_rows"),
                    ]
                ],
                title=f"{step.step_id}",
            )
        )
    return section if section.figures else None


def buckets(f: RunFacts) -> Section | None:
    decompose = f.steps_named("decompose")
    if not f.has("chunks") or not decompose:
        return None
    # With shift_target a chunk stores one token more than it trains on (the last position's target).
    shift = 1 if f.param(decompose[0], "shift_target") else 0
    rows = f.rows(
        f"SELECT c.k AS k, count(*) AS chunks, sum(c.length - {shift}) AS tokens, "
        f"sum(greatest((1 << c.k) - (c.length - {shift}), 0)) AS padding FROM "
        "(SELECT unnest(chunks) AS c FROM samples WHERE keep) GROUP BY ALL ORDER BY k"
    )
    if not rows:
        return None
    section = Section("buckets", "Length buckets (dataset decomposition)")
    labels = [f"2^{r['k']} ({2 ** r['k']})" for r in rows]
    section.figures.append(
        Figure(
            "fig-bucket-chunks", "chunks per bucket", plots.bars(labels, [r["chunks"] for r in rows], xlabel="chunks")
        )
    )
    section.figures.append(
        Figure(
            "fig-bucket-tokens",
            "trained positions per bucket",
            plots.bars(labels, [int(r["tokens"]) for r in rows], xlabel="tokens"),
        )
    )
    table = Table(["bucket", "chunks", "tokens", "padding tokens", "padding share"], [])
    for r, label in zip(rows, labels, strict=True):
        capacity = r["chunks"] * 2 ** r["k"]
        pad = int(r["padding"])
        table.rows.append([label, r["chunks"], int(r["tokens"]), pad, f"{pad / max(capacity, 1):.1%}"])
    section.tables.append(table)
    if f.has("dropped_tokens"):
        dropped = f.rows("SELECT sum(dropped_tokens) AS d FROM samples WHERE keep")[0]["d"] or 0
        section.notes.append(f"tokens dropped by decomposition (shorter than the smallest bucket): {int(dropped):,}")
    return section
