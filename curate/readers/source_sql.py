"""DuckDB SQL that reads a reader's columns back from the source file, as the reader makes them.

A run with ``output.source_columns: leave`` keeps in its sidecars only what the source does not
hold; the catalog's ``samples`` view gives the rest from the source Parquet with these expressions
(``curate.catalog``). Each says in SQL what the reader does in Arrow: a cast to the sample column's
type, a typed null for a column the source lacks, and ``meta``, the JSON object of the source's
other columns (``parquet_reader.meta_json``).

``meta`` is the same object, not the same text: DuckDB writes lists without spaces and numbers in
its own shortest notation (``0.00001`` where Python writes ``1e-05``); ``json.loads`` of both is
equal, and DuckDB's JSON functions read both alike. Types it cannot render as ``json_safe`` does
(structs, dates, binary) have no expression: such a shard keeps ``meta`` in its sidecar.
"""

from __future__ import annotations

import json

import pyarrow as pa

from curate.stepkit import quote_identifier

_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


def duckdb_type(arrow_type: pa.DataType) -> str:
    if arrow_type not in _DUCKDB_TYPES:
        raise TypeError(f"no DuckDB type for Arrow {arrow_type} in source_sql")
    return _DUCKDB_TYPES[arrow_type]


def cast_sql(column: str, arrow_type: pa.DataType) -> str:
    """The source's ``column`` cast as Arrow casts it to ``arrow_type``."""
    return f"CAST({quote_identifier(column)} AS {duckdb_type(arrow_type)})"


def null_sql(arrow_type: pa.DataType) -> str:
    return f"CAST(NULL AS {duckdb_type(arrow_type)})"


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _json_safe_sql(expr: str, arrow_type: pa.DataType, depth: int = 0) -> str | None:
    """A value as ``json_safe`` makes it, for DuckDB's ``to_json``: floats widened to double (Python
    reads a float32 as the double it widens to) and non-finite ones null. None for a type that
    ``json_safe`` would render with ``str`` (structs, dates, ...)."""
    if pa.types.is_floating(arrow_type):
        wide = f"CAST({expr} AS DOUBLE)"
        return f"CASE WHEN isfinite({wide}) THEN {wide} END"
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return expr
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return expr
    if _is_list(arrow_type):
        var = f"v{depth}"
        inner = _json_safe_sql(var, arrow_type.value_type, depth + 1)
        return None if inner is None else f"list_transform({expr}, lambda {var}: {inner})"
    return None


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def meta_json_sql(schema: pa.Schema, columns: list[str]) -> str | None:
    """``meta``: the JSON object of the row's non-null values of ``columns`` (keys sorted, as
    ``meta_json``), null when all are null. None when a column's type has no JSON expression."""
    if not columns:
        return "CAST(NULL AS VARCHAR)"
    parts, nulls = [], []
    for name in sorted(columns):
        value = _json_safe_sql(quote_identifier(name), schema.field(name).type)
        if value is None:
            return None
        key = _sql_text(json.dumps(name, ensure_ascii=False) + ": ")
        column = quote_identifier(name)
        parts.append(
            f"CASE WHEN {column} IS NOT NULL THEN {key} || COALESCE(CAST(to_json({value}) AS VARCHAR), 'null') END"
        )
        nulls.append(f"{column} IS NULL")
    return f"CASE WHEN {' AND '.join(nulls)} THEN NULL ELSE '{{' || concat_ws(', ', {', '.join(parts)}) || '}}' END"
