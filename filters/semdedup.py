"""SemDeDup (Abbas et al. 2023): remove semantic near-duplicates within k-means clusters.

Global step. ``global_state``:
1. fits spherical k-means on a bounded, seeded sample of the kept rows' embeddings (image
   embeddings by default);
2. streams every kept row once, assigning its nearest centroid, into a work file;
3. reads that file back sorted by (cluster, rank) with DuckDB (an out-of-core sort), so that one
   cluster at a time is in memory. Within a cluster, members are ranked by the keep policy
   (the reference keeps the member furthest from the centroid first), and each member's
   ``max_sim`` is its largest cosine similarity to a member ranked before it, computed in blocks
   so a big cluster never needs its whole similarity matrix;
4. writes the annotations partitioned by shard, and counts how many rows ``max_sim > 1 - eps``
   removes for every ``report_eps`` (the pass is done once; any eps is then one SQL query).
``decide`` joins a shard's annotations and drops rows with ``max_sim > 1 - eps`` as
``near_duplicate``. As in the reference, a row is compared with every earlier-ranked member, kept
or not, so the result does not depend on the order rows were processed in.

Columns: ``{prefix}_cluster``, ``{prefix}_centroid_sim``, ``{prefix}_max_sim`` (null for a
cluster's first member) and ``{prefix}_duplicate_of`` (uid of the most similar earlier member).
Rows dropped by an earlier step are neither clustered nor compared, and get no decision.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.registry import register_step
from curate.stepkit import quote_identifier
from filters.clustering import CentroidIndex, fit_sample, fit_sample_columns, size_spread, spherical_kmeans
from filters.embeddings import column_to_matrix, normalize_rows

logger = logging.getLogger(__name__)

ELIGIBLE = "status = 'success' AND keep"
_SIMS_PER_BLOCK = 1 << 22  # similarity entries computed at once within a cluster (16 MiB)
_READ_BATCH_ROWS = 65_536  # rows per batch when streaming the pool and the sorted clusters


class SemDeDupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_column: str = Field(default="clip_image_emb", description="image (default) or text embeddings")
    num_clusters: int = Field(default=1000, ge=1, description="k-means clusters (the paper: 50k for LAION-440M)")
    iterations: int = Field(default=20, ge=1)
    max_fit_samples: int = Field(default=262_144, ge=1, description="k-means is fitted on a sample this big")
    eps: float = Field(default=0.05, gt=0.0, lt=2.0, description="drop when similarity > 1 - eps")
    report_eps: list[float] = Field(
        default=[0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2], description="removal counts reported for each"
    )
    keep: Literal["farthest", "closest", "highest_score", "lowest_score"] = Field(
        default="farthest",
        description="which member of a duplicate group stays: farthest from / closest to the centroid (the "
        "reference keeps the farthest), or the highest / lowest score_column",
    )
    score_column: str | None = Field(default=None, description="for keep: highest_score / lowest_score")
    seed: int = 0
    prefix: str = Field(default="semdedup", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @model_validator(mode="after")
    def _score_policy(self) -> SemDeDupParams:
        if self.keep.endswith("_score") and not self.score_column:
            raise ValueError(f"score_column: keep: {self.keep} needs a score_column (e.g. clip_score)")
        if any(not 0 < e < 2 for e in self.report_eps):
            raise ValueError(f"report_eps: values {self.report_eps} must each be in (0, 2)")
        return self


def max_sim_to_earlier(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows in rank order: each row's largest cosine similarity to an earlier row, and which row
    (-1 and NaN for the first). Blocked, so memory stays at ``_SIMS_PER_BLOCK`` similarities."""
    n = len(vectors)
    best = np.full(n, np.nan, np.float32)
    which = np.full(n, -1, np.int64)
    rows_per_block = max(1, _SIMS_PER_BLOCK // max(n, 1))
    for start in range(1, n, rows_per_block):
        stop = min(n, start + rows_per_block)
        sims = vectors[start:stop] @ vectors[:stop].T
        # Row i may only look at rows before it.
        sims[np.arange(stop - start)[:, None] + start <= np.arange(stop)[None, :]] = -np.inf
        which[start:stop] = sims.argmax(axis=1)
        best[start:stop] = sims[np.arange(stop - start), which[start:stop]]
    return best, which


_RESULT_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("shard_index", pa.int32()),
        ("cluster", pa.int32()),
        ("centroid_sim", pa.float32()),
        ("max_sim", pa.float32()),
        ("duplicate_of", pa.string()),
    ]
)


def _dedup_cluster(members: pa.Table) -> pa.Table:
    vectors = normalize_rows(column_to_matrix(members["e"], "embedding"))
    best, which = max_sim_to_earlier(vectors)
    uids = members["uid"]
    earlier = pc.take(uids, pa.array(np.where(which >= 0, which, 0))).to_pylist()
    duplicate_of = [uid if w >= 0 else None for uid, w in zip(earlier, which, strict=True)]
    return pa.table(
        {
            "uid": uids,
            "shard_index": members["shard_index"],
            "cluster": members["cluster"],
            "centroid_sim": members["centroid_sim"],
            "max_sim": pa.array(best, pa.float32(), mask=which < 0),
            "duplicate_of": pa.array(duplicate_of, pa.string()),
        },
        schema=_RESULT_SCHEMA,
    )


def _shard_annotations(folder: str, shard_index: int) -> dict[str, tuple]:
    files = sorted(Path(folder, f"shard_index={shard_index}").glob("*.parquet"))
    if not files:
        return {}
    table = pa.concat_tables([pq.read_table(f) for f in files])
    columns = [table[c].to_pylist() for c in ("uid", "cluster", "centroid_sim", "max_sim", "duplicate_of")]
    return {row[0]: row[1:] for row in zip(*columns, strict=True)}


@register_step("semdedup", params=SemDeDupParams, global_decision=True, rows="kept")
class SemDeDup:
    """SemDeDup: drop near-duplicates (cosine > 1 - eps) within k-means clusters, keeping one per group."""

    def __init__(self, params: SemDeDupParams):
        self.params = params
        # The last shard's annotations, kept on the step object (one run): a batch retried row by
        # row looks them up once, not once per row.
        self._annotations: tuple[str, int, dict[str, tuple]] | None = None

    def _lookup(self, folder: str, shard_index: int) -> dict[str, tuple]:
        if self._annotations is None or self._annotations[:2] != (folder, shard_index):
            self._annotations = (folder, shard_index, _shard_annotations(folder, shard_index))
        return self._annotations[2]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch  # decides in decide(), once every cluster has been compared

    def _rank_expression(self) -> str:
        p = self.params
        if p.keep == "farthest":
            return "centroid_sim ASC"
        if p.keep == "closest":
            return "centroid_sim DESC"
        return "score DESC NULLS LAST" if p.keep == "highest_score" else "score ASC NULLS LAST"

    @staticmethod
    def state_columns(params: SemDeDupParams) -> tuple[str, ...]:
        # the fit, then every kept row's uid, embedding and (to rank a group) score
        return (*fit_sample_columns(params.embedding_column), *([params.score_column] if params.score_column else []))

    def global_state(self, con: duckdb.DuckDBPyConnection, artifacts: Path) -> dict:
        p = self.params
        vectors, skipped = fit_sample(con, p.embedding_column, seed=p.seed, limit=p.max_fit_samples, where=ELIGIBLE)
        centroids = spherical_kmeans(vectors, p.num_clusters, iterations=p.iterations, seed=p.seed)
        artifacts.mkdir(parents=True, exist_ok=True)
        np.save(artifacts / "centroids.npy", centroids)
        work = artifacts / "_work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        assigned = work / "assigned.parquet"
        rows, non_finite = self._assign_all(con, CentroidIndex(centroids), assigned)
        results = work / "results.parquet"
        sizes = self._compare_within_clusters(con, assigned, results)
        annotations = artifacts / "annotations"
        shutil.rmtree(annotations, ignore_errors=True)
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{_sql_path(results)}') ORDER BY shard_index, uid) "
            f"TO '{_sql_path(annotations)}' (FORMAT parquet, PARTITION_BY (shard_index))"
        )
        counts = con.execute(
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE max_sim > {1 - e!r})" for e in p.report_eps)
            + f", count(*) FILTER (WHERE max_sim > {1 - p.eps!r}) FROM read_parquet('{_sql_path(results)}')"
        ).fetchall()[0]
        shutil.rmtree(work, ignore_errors=True)
        state = {
            "annotations": str(annotations),
            "num_clusters": p.num_clusters,
            "fit_samples": len(vectors),
            "fit_skipped_non_finite": skipped,
            "rows": rows,
            "rows_non_finite": non_finite,
            "cluster_sizes": size_spread(sizes),
            "eps": p.eps,
            "removed": int(counts[-1]),
            "removed_by_eps": {str(e): int(c) for e, c in zip(p.report_eps, counts[:-1], strict=True)},
        }
        logger.info("semdedup: %d of %d rows are near-duplicates at eps=%s", state["removed"], rows, p.eps)
        return state

    def _assign_all(self, con: duckdb.DuckDBPyConnection, index: CentroidIndex, path: Path) -> tuple[int, int]:
        """Stream every eligible row once: nearest centroid, similarity to it, rank score."""
        p = self.params
        col = quote_identifier(p.embedding_column)
        score = f"CAST({quote_identifier(p.score_column)} AS DOUBLE)" if p.score_column else "NULL::DOUBLE"
        reader = con.sql(
            f"SELECT uid, shard_index, {col} AS e, {score} AS score FROM staged WHERE {col} IS NOT NULL AND {ELIGIBLE}"
        ).to_arrow_reader(_READ_BATCH_ROWS)
        rows = non_finite = 0
        writer = None
        try:
            for record_batch in reader:
                batch = pa.Table.from_batches([record_batch])
                matrix = column_to_matrix(batch["e"], p.embedding_column, allow_non_finite=True)
                finite = np.isfinite(matrix).all(axis=1)
                non_finite += int((~finite).sum())
                batch = batch.filter(pa.array(finite))
                vectors = normalize_rows(matrix[finite])
                cluster, sims = index.nearest(vectors)
                table = pa.table(
                    {
                        "uid": batch["uid"],
                        "shard_index": batch["shard_index"].cast(pa.int32()),
                        "cluster": pa.array(cluster, pa.int32()),
                        "centroid_sim": pa.array(sims, pa.float32()),
                        "score": batch["score"],
                        "e": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                    }
                )
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"embedding_column: {p.embedding_column!r} has no finite embeddings among kept rows")
        return rows, non_finite

    def _compare_within_clusters(self, con: duckdb.DuckDBPyConnection, assigned: Path, results: Path) -> np.ndarray:
        """Walk the rows sorted by (cluster, rank), one whole cluster at a time."""
        reader = con.sql(
            f"SELECT * FROM read_parquet('{_sql_path(assigned)}') ORDER BY cluster, {self._rank_expression()}, uid"
        ).to_arrow_reader(_READ_BATCH_ROWS)
        sizes = np.zeros(self.params.num_clusters, np.int64)
        pending: pa.Table | None = None
        with pq.ParquetWriter(results, _RESULT_SCHEMA) as writer:
            for record_batch in reader:
                table = pa.Table.from_batches([record_batch])
                table = pa.concat_tables([pending, table]) if pending is not None else table
                clusters = table["cluster"].to_numpy()
                # The last cluster in this batch may go on in the next one.
                cut = int(np.searchsorted(clusters, clusters[-1], side="left"))
                for members in _split_runs(table.slice(0, cut), clusters[:cut]):
                    sizes[members["cluster"][0].as_py()] = members.num_rows
                    writer.write_table(_dedup_cluster(members))
                pending = table.slice(cut)
            if pending is not None and pending.num_rows:
                sizes[pending["cluster"][0].as_py()] = pending.num_rows
                writer.write_table(_dedup_cluster(pending))
        return sizes

    def decide(self, batch: pa.Table, state: dict) -> pa.Table:
        p = self.params
        n = batch.num_rows
        keep_before = batch["keep"].to_pylist()
        shards = batch["shard_index"].to_pylist()
        uids = batch["uid"].to_pylist()
        if p.embedding_column in batch.column_names and n:
            # A NaN embedding has no annotation; fail its row with the reason rather than pass it.
            column_to_matrix(batch[p.embedding_column], p.embedding_column)
        found = []
        for uid, shard, eligible in zip(uids, shards, keep_before, strict=True):
            if not eligible:
                found.append((None, None, None, None))
                continue
            row = self._lookup(state["annotations"], int(shard)).get(uid)
            if row is None:
                raise ValueError(f"no semdedup annotation for kept row {uid}: was the stage changed after the fit?")
            found.append(row)
        columns_found = [list(c) for c in zip(*found, strict=True)] if found else [[], [], [], []]
        cluster, centroid_sim, max_sim, duplicate_of = columns_found
        limit = 1.0 - state["eps"]
        keep = [None if not e else (m is None or m <= limit) for e, m in zip(keep_before, max_sim, strict=True)]
        columns = {
            f"{p.prefix}_cluster": pa.array(cluster, pa.int32()),
            f"{p.prefix}_centroid_sim": pa.array(centroid_sim, pa.float32()),
            f"{p.prefix}_max_sim": pa.array(max_sim, pa.float32()),
            f"{p.prefix}_duplicate_of": pa.array(duplicate_of, pa.string()),
            "step_keep": pa.array(keep, pa.bool_()),
            "step_drop_reason": pa.array([None if k in (None, True) else "near_duplicate" for k in keep], pa.string()),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch


def _split_runs(table: pa.Table, clusters: np.ndarray) -> list[pa.Table]:
    """Consecutive rows with the same cluster id, as separate tables."""
    if not len(clusters):
        return []
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    ends = np.r_[starts[1:], len(clusters)]
    return [table.slice(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
