"""Embedding columns <-> numpy, shared by the clustering steps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def column_to_matrix(column: pa.ChunkedArray | pa.Array, name: str, *, allow_non_finite: bool = False) -> np.ndarray:
    """A (fixed-size) list column of floats as a float32 (N, D) matrix; rejects nulls and, unless
    ``allow_non_finite``, NaNs and infinities."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type)):
        raise ValueError(f"embedding column {name!r} has type {column.type}, expected a list of floats")
    if column.null_count:
        raise ValueError(f"embedding column {name!r} has {column.null_count} null rows")
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = flat.reshape(len(column), -1)
    if not allow_non_finite and not np.isfinite(matrix).all():
        bad = int((~np.isfinite(matrix)).any(axis=1).sum())
        raise ValueError(f"embedding column {name!r} has {bad} rows with NaN or infinite values")
    return matrix


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def load_reference_embeddings(path: str, column: str = "embedding") -> np.ndarray:
    """Reference embeddings from ``.npy`` (N, D) or a Parquet list column (``column``)."""
    if path.endswith(".npy"):
        matrix = np.load(path).astype(np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"reference file {path}: expected a 2-D array, found shape {matrix.shape}")
        return matrix
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise ValueError(f"reference file {path}: no column {column!r}; columns: {table.column_names}")
        return column_to_matrix(table[column], column)
    raise ValueError(f"reference file {path}: expected .npy or .parquet")
