"""The run's DuckDB catalog: views over every Parquet the run wrote.

``duckdb run/catalog.duckdb "select count(*) from samples"`` works with no project code. Views
hold absolute paths (DuckDB resolves relative paths against the current directory, not the
database file); ``curate catalog RUN`` rebuilds them after a run folder is moved.
"""

from __future__ import annotations

import json
import os
import tempfile

import duckdb
import pyarrow as pa

from curate.run_storage import RunStorage
from curate.stepkit import quote_identifier

CATALOG_STORAGE_VERSION = "v1.0.0"

VIEWS: dict[str, str | None] = {
    # One row per input sample, failures and drops included: the Parquet sidecars as written.
    "sidecars": "SELECT * FROM read_parquet('{root}/shards/*.parquet', union_by_name = true)",
    # The sidecars with the columns the run left in its source read back from it: made by samples_sql.
    "samples": None,
    # One row per (sample, step) decision; failures appear as decisions of the step that failed them.
    "decisions": (
        "SELECT s.uid, s.shard, s.output_key, s.keep AS final_keep, d.step, d.keep, d.drop_reason "
        "FROM sidecars AS s, UNNEST(s.decisions) AS u(d)"
    ),
    # Only the samples that are in the output tars.
    "kept": "SELECT * FROM samples WHERE keep",
    "shards": "SELECT * FROM read_parquet('{root}/shards.parquet')",
    "steps": "SELECT * FROM read_parquet('{root}/steps.parquet')",
    # Bucketed runs (output.layout: buckets): one row per chunk, with its bucket and provenance.
    "chunks": "SELECT * FROM read_parquet('{root}/D_*/*.parquet', filename = true)",
}
# Views over files that only some runs write.
OPTIONAL_VIEWS: dict[str, str | None] = {"chunks": "D_*/*.parquet"}


def _sql_path(path: str) -> str:
    return str(path).replace("'", "''")


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(f"'{_sql_path(p)}'" for p in paths) + "]"


def joined_sql(sidecars: str, sources: list[str], columns: dict[str, str]) -> str:
    """The rows of ``sidecars`` (a ``read_parquet`` argument: a glob or a list) with ``columns``
    (name -> SQL over a source file's own columns) read from the source files each row came from:
    row ``row_in_shard`` of the file ``source`` names."""
    select = ", ".join(f"{sql} AS {quote_identifier(name)}" for name, sql in columns.items())
    sources = list(dict.fromkeys(sources))  # a file read twice would join each row twice
    return (
        f"SELECT s.*, src.* EXCLUDE (_source_file, _source_row) "
        f"FROM read_parquet({sidecars}, union_by_name = true) AS s LEFT JOIN ("
        f"SELECT filename AS _source_file, file_row_number AS _source_row, {select} "
        f"FROM read_parquet({_sql_list(sources)}, filename = true, file_row_number = true, union_by_name = true)"
        f") AS src ON src._source_file = s.source AND src._source_row = s.row_in_shard"
    )


def _left_columns(storage: RunStorage) -> list[tuple[str, str, dict[str, str]]]:
    """(sidecar, source, columns it left there) for each shard of the run (``shards.parquet``)."""
    if not storage.exists("shards.parquet"):
        return []
    table = storage.read_parquet("shards.parquet")
    if "left_in_source" not in table.column_names:  # a run of an earlier version: sidecars hold all
        return []
    rows = zip(
        table["shard"].to_pylist(), table["source"].to_pylist(), table["left_in_source"].to_pylist(), strict=True
    )
    return [
        (storage.url(f"shards/{shard.removesuffix('.tar')}.parquet"), source, json.loads(left or "{}"))
        for shard, source, left in rows
    ]


def shard_samples(run_root: str | os.PathLike, shard_index: int) -> pa.Table:
    """One shard's rows of the ``samples`` view, in row order: its sidecar, with the columns it
    left in its source read back from there."""
    storage = RunStorage(str(run_root))
    sidecar = storage.url(f"shards/{shard_index:08d}.parquet")
    left = {s: (source, columns) for s, source, columns in _left_columns(storage)}.get(sidecar)
    if not left or not left[1]:
        return storage.read_parquet(f"shards/{shard_index:08d}.parquet")
    con = duckdb.connect()
    try:
        if not storage.is_local:
            con.register_filesystem(storage.fs)
        sql = joined_sql(f"'{_sql_path(sidecar)}'", [left[0]], left[1])
        return con.sql(f"{sql} ORDER BY s.row_in_shard").to_arrow_table()
    finally:
        con.close()


def samples_sql(storage: RunStorage) -> str:
    """The ``samples`` view: the sidecars, and for the shards that left columns in their source
    (``output.source_columns: leave``), those columns joined back from it. Shards that left the same
    columns are one join; the view is the union of them, by name, with the shards that left none."""
    everything = f"'{_sql_path(storage.url('shards/*.parquet'))}'"
    shards = _left_columns(storage)
    groups: dict[str, list[tuple[str, str]]] = {}
    copied = []
    for sidecar, source, left in shards:
        if left:
            groups.setdefault(json.dumps(left, sort_keys=True), []).append((sidecar, source))
        else:
            copied.append(sidecar)
    if not groups:
        return f"SELECT * FROM read_parquet({everything}, union_by_name = true)"
    parts = []
    for key, members in groups.items():
        sidecars = everything if len(members) == len(shards) else _sql_list([m[0] for m in members])
        parts.append(joined_sql(sidecars, [m[1] for m in members], json.loads(key)))
    if copied:
        parts.append(f"SELECT * FROM read_parquet({_sql_list(copied)}, union_by_name = true)")
    return " UNION ALL BY NAME ".join(f"({part})" for part in parts)


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
                sql = samples_sql(storage) if sql is None else sql.format(root=_sql_path(storage.url()))
                con.execute(f"CREATE VIEW {name} AS {sql}")
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
