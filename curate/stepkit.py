"""The small leaf module that steps import: decision columns and SQL quoting.

Steps (``filters/``, ``captioners/``, ``curate/pack/``) import this module, ``curate.registry`` and
``schemas/``; never the engine (plan, executor, stage store, sink, run folder). This module
imports nothing of the project, so a step stays testable on a plain Arrow table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

# The built-in recipes' folder: data files named by them (entries, vocabularies) live beside them.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"

# A deciding step appends these two columns; the engine folds them into keep / drop_reason /
# decisions. A null ``step_keep`` means "no decision for this row".
STEP_KEEP = "step_keep"
STEP_DROP_REASON = "step_drop_reason"


class StepInputError(ValueError):
    """The batch a step is given cannot be what the recipe meant (a missing or mistyped input column):
    a recipe mistake, so it fails the run naming the field instead of failing every row one by one."""


def load_npy(path: str) -> np.ndarray:
    """An array a global step saved among its artifacts: a local path, or a URL (``s3://...``) when
    the run folder is on an object store and the reader a Ray task on any node."""
    import fsspec

    with fsspec.open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


def read_artifact_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet table a global step saved among its artifacts (local path or URL)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def quote_identifier(name: str) -> str:
    """A column name as a DuckDB identifier for SQL over ``staged`` (any characters, quotes escaped)."""
    return '"' + name.replace('"', '""') + '"'


def append_columns(batch: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Append new columns in order (a step's annotations, then its decision)."""
    for name, values in columns.items():
        batch = batch.append_column(name, values)
    return batch


def resolve_data_path(value: str) -> str:
    """A local path as given, else (relative paths only) the file of that name beside the built-in
    recipes, so that a built-in recipe finds its data file from any working directory."""
    if "://" in value or Path(value).is_file() or Path(value).is_absolute():
        return value
    for candidate in (PIPELINES_DIR / value, PIPELINES_DIR.parent / value):
        if candidate.is_file():
            return str(candidate)
    return value


def with_status(batch: pa.Table, status: list, errors: list) -> pa.Table:
    """``batch`` with its ``status`` and ``error_message`` columns replaced (a step failed some rows)."""
    for name, values in (("status", status), ("error_message", errors)):
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
    return batch


def resolve_device(device: str) -> str:
    """auto: cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: value 'cuda' but torch.cuda.is_available() is False; use 'auto' or 'cpu'")
    return device
