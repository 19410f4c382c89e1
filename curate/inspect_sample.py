"""``curate inspect RUN UID``: everything the run knows about one sample.

Its row of the samples view (captions, scores, sizes, status), each step's decision, its clusters
(MoDE columns; SemDeDup's cluster and nearest duplicate from the barrier's annotations), its
length-bucket chunks, its GBC graph, and where it went (output shard and key). Embeddings are shown
by their size and norm, not their values. ``--save-image`` writes its image, read from the input.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.catalog import connect
from curate.rundir import RunDir

# Shown in their own sections (or not at all), not among the plain fields.
_SECTIONED = {"decisions", "chunks", "gbc_graph"}


@dataclass
class SampleReport:
    uid: str
    fields: dict
    decisions: list[dict]
    chunks: list[dict]
    graph: dict | None
    clusters: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return self.__dict__


def _summarise(value):
    """A value as a person reads it: vectors as their size and norm, long lists cut."""
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value[:8]):
        norm = math.sqrt(sum(v * v for v in value if v is not None and math.isfinite(v)))
        return f"<vector of {len(value)}, norm {norm:.3f}>"
    if isinstance(value, list) and len(value) > 20:
        return [*value[:20], f"... {len(value) - 20} more"]
    return value


def _semdedup_row(run: RunDir, uid: str) -> dict:
    """The sample's SemDeDup annotation (cluster, nearest same-cluster similarity, duplicate of)."""
    states_path = run.root / "global_state.json"
    if not states_path.exists():
        return {}
    out = {}
    for step_id, state in json.loads(states_path.read_text()).items():
        path = state.get("annotations") if isinstance(state, dict) else None
        if not path or not Path(path).exists():
            continue
        table = pq.read_table(path, filters=[("uid", "=", uid)])
        if table.num_rows:
            row = table.to_pylist()[0]
            out[step_id] = {k: _summarise(v) for k, v in row.items() if k not in ("uid", "e")}
    return out


def inspect_sample(root: str | os.PathLike, uid: str) -> SampleReport:
    run = RunDir(root)
    con = connect(run.root)
    try:
        table: pa.Table = con.sql("SELECT * FROM samples WHERE uid = ?", params=[uid]).to_arrow_table()
    finally:
        con.close()
    if table.num_rows == 0:
        raise ValueError(f"uid: value {uid!r} is not a sample of {run.root} (uids are 32 lowercase hex chars)")
    row = table.to_pylist()[0]
    graph = json.loads(row["gbc_graph"]) if row.get("gbc_graph") else None
    clusters = {k: v for k, v in row.items() if k.startswith("mode_")}
    clusters.update(_semdedup_row(run, uid))
    fields = {k: _summarise(v) for k, v in row.items() if k not in _SECTIONED and k not in clusters}
    return SampleReport(uid, fields, row.get("decisions") or [], row.get("chunks") or [], graph, clusters)


def save_image(root: str | os.PathLike, uid: str, path: str | os.PathLike) -> int:
    """Write the sample's image bytes (as stored in the input) to ``path``; returns the byte count."""
    from curate.sample_images import RunImages

    run = RunDir(root)
    con = connect(run.root)
    try:
        rows = con.sql(
            "SELECT uid, key, shard_index, row_in_shard, image_offset, image_size FROM samples WHERE uid = ?",
            params=[uid],
        ).to_arrow_table()
    finally:
        con.close()
    if rows.num_rows == 0:
        raise ValueError(f"uid: value {uid!r} is not a sample of {run.root}")
    (data,) = RunImages(run).fetch(rows)
    if data is None:
        raise ValueError(f"uid {uid!r} has no image in the input (a failed download, or the input moved)")
    Path(path).write_bytes(data)
    return len(data)


def describe(report: SampleReport) -> list[str]:
    lines = [f"sample {report.uid}"]
    width = max(len(k) for k in report.fields)
    lines += [f"  {k:<{width}}  {v}" for k, v in report.fields.items() if v is not None]
    lines.append("decisions:")
    for d in report.decisions:
        verdict = "kept" if d.get("keep") else f"dropped ({d.get('drop_reason')})"
        lines.append(f"  {d['step']}: {verdict}")
    if report.clusters:
        lines.append("clusters:")
        lines += [f"  {k}: {v}" for k, v in report.clusters.items()]
    if report.chunks:
        lines.append("chunks (length buckets):")
        lines += [
            f"  #{c['index']}: offset {c['offset']}, 2^{c['k']} bucket, {c['length']} tokens" for c in report.chunks
        ]
    if report.graph:
        lines.append(f"GBC graph: {len(report.graph.get('vertices', []))} vertices")
        for v in report.graph.get("vertices", []):
            text = "; ".join(d.get("text", "") for d in v.get("descs", []))[:160]
            lines.append(f"  {v.get('vertex_id')} [{v.get('label')}]: {text}")
    return lines
