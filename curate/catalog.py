"""The run's DuckDB catalog: views over every Parquet the run wrote.

``duckdb run/catalog.duckdb "select count(*) from samples"`` works with no project code. Views
hold absolute paths (DuckDB resolves relative paths against the current directory, not the
database file); ``curate catalog RUN`` rebuilds them after a run folder is moved.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

CATALOG_STORAGE_VERSION = "v1.0.0"

VIEWS = {
    # One row per input sample, failures and drops included (the Parquet sidecars).
    "samples": "SELECT * FROM read_parquet('{root}/shards/*.parquet', union_by_name = true)",
    # One row per (sample, step) decision; failures appear as decisions of the step that failed them.
    "decisions": (
        "SELECT s.uid, s.shard, s.output_key, s.keep AS final_keep, d.step, d.keep, d.drop_reason "
        "FROM samples AS s, UNNEST(s.decisions) AS u(d)"
    ),
    # Only the samples that are in the output tars.
    "kept": "SELECT * FROM samples WHERE keep",
    "shards": "SELECT * FROM read_parquet('{root}/shards.parquet')",
    "steps": "SELECT * FROM read_parquet('{root}/steps.parquet')",
    # Bucketed runs (output.layout: buckets): one row per chunk, with its bucket and provenance.
    "chunks": "SELECT * FROM read_parquet('{root}/D_*/*.parquet', filename = true)",
}
# Views over files that only some runs write.
OPTIONAL_VIEWS = {"chunks": "D_*/*.parquet"}


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def build_catalog(run_root: str | os.PathLike) -> Path:
    root = Path(run_root).resolve()
    target = root / "catalog.duckdb"
    tmp = root / ".catalog.duckdb.tmp"
    tmp.unlink(missing_ok=True)
    # Readable by the DuckDB CLI on PyPI (duckdb-cli 1.5.x), which cannot open duckdb 2.0's default
    # storage format; views over Parquet need nothing newer.
    con = duckdb.connect(str(tmp), config={"storage_compatibility_version": CATALOG_STORAGE_VERSION})
    try:
        for name, sql in VIEWS.items():
            if name in OPTIONAL_VIEWS and not any(root.glob(OPTIONAL_VIEWS[name])):
                continue
            con.execute(f"CREATE VIEW {name} AS {sql.format(root=_sql_path(root))}")
    finally:
        con.close()
    Path(str(tmp) + ".wal").unlink(missing_ok=True)
    os.replace(tmp, target)
    return target


def connect(run_root: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    path = Path(run_root) / "catalog.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_root} a finished curate run?")
    return duckdb.connect(str(path), read_only=True)
