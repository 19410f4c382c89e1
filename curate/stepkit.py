"""The small leaf module that steps import: decision columns and SQL quoting.

Steps (``filters/``, ``captioners/``, ``curate/pack/``) import this module, ``curate.registry`` and
``schemas/``; never the engine (plan, executor, stage store, sink, run folder). This module
imports nothing of the project, so a step stays testable on a plain Arrow table.
"""

from __future__ import annotations

import pyarrow as pa

# A deciding step appends these two columns; the engine folds them into keep / drop_reason /
# decisions. A null ``step_keep`` means "no decision for this row".
STEP_KEEP = "step_keep"
STEP_DROP_REASON = "step_drop_reason"


def quote_identifier(name: str) -> str:
    """A column name as a DuckDB identifier for SQL over ``staged`` (any characters, quotes escaped)."""
    return '"' + name.replace('"', '""') + '"'


def append_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Append new columns in order (a step's annotations, then its decision)."""
    for name, values in columns.items():
        batch = batch.append_column(name, values)
    return batch
