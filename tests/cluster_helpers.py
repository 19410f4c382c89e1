"""Helpers for the clustering tests: sample tables with embeddings, a DuckDB ``staged`` view over
them (as the runner's global phase has), and purity against labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.identity import derive_uid
from filters.text_embed import to_fixed_size_list
from schemas.tables import rows_to_sample_table


def sample_table(vectors: np.ndarray, *, shards: int = 1, dtype: type = np.float32, **columns) -> pa.Table:
    """Successful, kept rows with ``emb`` (float32 unless ``dtype``), spread over ``shards`` shards."""
    n = len(vectors)
    rows = [
        {
            "uid": derive_uid(f"http://x/{i}", str(i)),
            "shard_index": i % shards,
            "row_in_shard": i // shards,
            "shard_rows": -(-n // shards),
        }
        for i in range(n)
    ]
    table = rows_to_sample_table(rows)
    table = table.append_column("emb", to_fixed_size_list(vectors, dtype))
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values))
    return table


def staged_connection(table: pa.Table, folder: Path) -> duckdb.DuckDBPyConnection:
    """A connection with the view ``staged`` over ``table`` written as Parquet, as in a run."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "staged.parquet"
    pq.write_table(table, path)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW staged AS SELECT * FROM read_parquet('{path}')")
    return con


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose label is their cluster's most common label."""
    top = sum(Counter(labels[clusters == c].tolist()).most_common(1)[0][1] for c in np.unique(clusters))
    return top / len(clusters)


def chance_purity(clusters: np.ndarray, labels: np.ndarray, *, repeats: int = 20, seed: int = 0) -> float:
    """Purity of the same cluster sizes with the labels shuffled: what no semantics at all scores."""
    rng = np.random.default_rng(seed)
    return float(np.mean([purity(rng.permutation(clusters), labels) for _ in range(repeats)]))


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
