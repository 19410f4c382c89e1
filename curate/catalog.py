"""The run's DuckDB catalog: views over every Parquet the run wrote.

``duckdb run/catalog.duckdb "select count(*) from samples"`` works with no project code. Views
hold absolute paths (DuckDB resolves relative paths against the current directory, not the
database file); ``curate catalog RUN`` rebuilds them after a run folder is moved.
"""

from __future__ import annotations

import os
import tempfile

import duckdb

from curate.run_storage import RunStorage

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


def _sql_path(path: str) -> str:
    return str(path).replace("'", "''")


def build_catalog(run_root: str | os.PathLike) -> str:
    """Write ``catalog.duckdb`` into the run folder (local or on an object store); returns its URL."""
    storage = RunStorage(str(run_root))
    with tempfile.TemporaryDirectory(prefix="curate-catalog-") as scratch:
        local = os.path.join(scratch, "catalog.duckdb")
        # Readable by the DuckDB CLI on PyPI (duckdb-cli 1.5.x), which cannot open duckdb 2.0's default
        # storage format; views over Parquet need nothing newer.
        con = duckdb.connect(local, config={"storage_compatibility_version": CATALOG_STORAGE_VERSION})
        try:
            if not storage.is_local:  # a view is bound when created: DuckDB reads the remote files
                con.register_filesystem(storage.fs)
            for name, sql in VIEWS.items():
                if name in OPTIONAL_VIEWS and not storage.glob(OPTIONAL_VIEWS[name]):
                    continue
                con.execute(f"CREATE VIEW {name} AS {sql.format(root=_sql_path(storage.url()))}")
        finally:
            con.close()
        storage.put_file(local, "catalog.duckdb")
    return storage.url("catalog.duckdb")


def connect(run_root: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """The run's catalog, read-only. For a run on an object store, a local copy of the catalog whose
    views read the remote Parquet through the run's filesystem (DuckDB's fsspec support, so no
    DuckDB extension is needed)."""
    storage = RunStorage(str(run_root))
    if not storage.exists("catalog.duckdb"):
        raise FileNotFoundError(f"{storage.url('catalog.duckdb')} does not exist: is {run_root} a finished curate run?")
    if storage.is_local:
        return duckdb.connect(storage.path("catalog.duckdb"), read_only=True)
    local = os.path.join(tempfile.mkdtemp(prefix="curate-catalog-"), "catalog.duckdb")
    storage.get_file("catalog.duckdb", local)
    con = duckdb.connect(local, read_only=True)
    con.register_filesystem(storage.fs)
    os.unlink(local)  # the connection holds it open; nothing is left behind when it closes
    os.rmdir(os.path.dirname(local))
    return con
