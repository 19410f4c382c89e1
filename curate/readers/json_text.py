"""JSON texts of Arrow columns, exactly as ``json.dumps(value)`` writes each value, with Arrow
kernels instead of a Python call per value.

A DataComp shard has ``face_bboxes`` (a list of lists of floats) on about one row in ten; as JSON
through ``json.dumps`` row by row that was most of the time it takes to read the shard. Numbers,
booleans and lists of them (nested to any depth) are encoded here; anything else (text, structs,
non-finite floats) is left to the caller's Python path (``None``).

Arrow formats a double with the shortest digits that read back to it, as Python's ``repr`` does,
but writes integral values without ``.0`` and switches to an exponent at other magnitudes:
integral values get ``.0``, and the few values outside ``[1e-4, 1e10)`` (where the two notations
differ) are formatted by ``repr``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Where Arrow's notation of a double is Python's too (beside 0): measured, both ends.
_PLAIN_LOW, _PLAIN_HIGH = 1e-4, 1e10


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _floats(values: pa.Array) -> pa.Array | None:
    values = values.cast(pa.float64())  # a float32 reads as the double it widens to, as in Python
    if pc.all(pc.fill_null(pc.is_finite(values), True)).as_py() is False:
        return None  # NaN and infinities are not JSON: json_safe decides what they become
    text = pc.cast(values, pa.string())
    integral = pc.equal(pc.floor(values), values)
    text = pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)
    size = pc.abs(values)
    other = pc.fill_null(
        pc.and_(pc.not_equal(values, 0), pc.or_(pc.less(size, _PLAIN_LOW), pc.greater_equal(size, _PLAIN_HIGH))),
        False,
    )
    if pc.any(other).as_py():
        texts = pa.array([repr(v) for v in pc.filter(values, other).to_pylist()], pa.string())
        text = pc.replace_with_mask(text, other, texts)
    return text


def _lists(values: pa.Array) -> pa.Array | None:
    if pa.types.is_fixed_size_list(values.type):
        values = values.cast(pa.list_(values.type.value_field))
    inner = json_values(pc.list_flatten(values))
    if inner is None:
        return None
    lengths = pc.fill_null(pc.list_value_length(values), 0).cast(pa.int64())
    offsets = pa.concat_arrays([pa.array([0], pa.int64()), pc.cumulative_sum(lengths)])
    per_row = pa.LargeListArray.from_arrays(offsets, pc.fill_null(inner, "null"), mask=pc.is_null(values))
    return pc.binary_join_element_wise("[", pc.binary_join(per_row, ", "), "]", "")


def json_values(values: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """Each value's JSON text (null where the value is null); None when the type is not one of
    numbers, booleans and lists of them."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_floating(t):
        return _floats(values)
    if pa.types.is_integer(t):
        return pc.cast(values, pa.string())
    if pa.types.is_boolean(t):
        return pc.cast(values, pa.string())  # true / false
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.string())
    if _is_list(t):
        return _lists(values)
    return None


def json_objects(columns: dict[str, pa.Array | pa.ChunkedArray]) -> pa.Array | None:
    """Per row, ``json.dumps({name: value ...}, sort_keys=True)`` of the row's non-null values (null
    where every value is null); None when a column's type is not one ``json_values`` encodes."""
    members = []
    for name in sorted(columns):
        texts = json_values(columns[name])
        if texts is None:
            return None
        members.append(pc.binary_join_element_wise(json.dumps(name, ensure_ascii=False) + ": ", texts, ""))
    if not members:
        raise ValueError("json_objects needs at least one column")
    if len(members) == 1:  # a null member is a null object
        return pc.binary_join_element_wise("{", members[0], "}", "")
    # Each row's non-null members in key order, joined as one list (binary_join_element_wise's
    # "skip" drops the rows whose every value is null, in pyarrow 26).
    n, m = len(members[0]), len(members)
    row_major = pc.take(pa.concat_arrays(members), pa.array((np.arange(m) * n + np.arange(n)[:, None]).ravel()))
    present = pc.is_valid(row_major).to_numpy(zero_copy_only=False)
    counts = present.reshape(n, m).sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    per_row = pa.LargeListArray.from_arrays(offsets, pc.filter(row_major, pa.array(present)))
    objects = pc.binary_join_element_wise("{", pc.binary_join(per_row, ", "), "}", "")
    return pc.if_else(pa.array(counts == 0), pa.scalar(None, pa.string()), objects)
