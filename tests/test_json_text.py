"""JSON texts of Arrow columns (``curate.readers.json_text``) equal ``json.dumps``, value by value."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from curate.readers.json_text import json_objects, json_values

# Where Arrow's and Python's float notations part (exponents, integral values), and around them.
EDGE_FLOATS = [0.0, -0.0, 1.0, -2.0, 1e-4, 9.999999999999999e-05, 1e-5, 1.5e-7, 1e10, 9999999999.999998, 1e16]
EDGE_FLOATS += [2.0**53, 123456789.0, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -6.02e23]


def _random_float(rng: random.Random) -> float:
    return rng.choice([rng.random(), rng.random() * 10 ** rng.randint(-12, 20), float(rng.randint(-5, 10**7))])


def _expected(rows: list[dict]) -> list[str | None]:
    out = []
    for row in rows:
        present = {k: v for k, v in row.items() if v is not None}
        out.append(json.dumps(present, sort_keys=True, ensure_ascii=False) if present else None)
    return out


def test_floats_print_as_python_prints_them() -> None:
    values = EDGE_FLOATS + [-v for v in EDGE_FLOATS] + [None]
    got = json_values(pa.array(values, pa.float64())).to_pylist()
    assert got == [None if v is None else json.dumps(v) for v in values]
    # a float32 is the double it widens to, as to_pylist gives it to json.dumps
    f32 = pa.array([0.1, 1.5, None], pa.float32())
    assert json_values(f32).to_pylist() == [json.dumps(v) if v is not None else None for v in f32.to_pylist()]


def test_rows_of_nested_lists_numbers_and_booleans_equal_json_dumps() -> None:
    """Every mix of null, empty and full values over a DataComp-like ``face_bboxes`` (nulls inside,
    at both depths), an integer, a boolean and a float32 column."""
    rng = random.Random(0)

    def box():
        values = [rng.choice([None, _random_float(rng), *EDGE_FLOATS]) for _ in range(rng.randint(0, 4))]
        return rng.choice([None, values])

    rows = [
        {
            "face_bboxes": rng.choice([None, [], [box() for _ in range(rng.randint(0, 3))]]),
            "n": rng.choice([None, rng.randint(-(10**12), 10**12)]),
            "flag": rng.choice([None, True, False]),
            "f32": rng.choice([None, 0.1, 1.5, 3.0]),
        }
        for _ in range(3000)
    ]
    table = pa.table(
        {
            "face_bboxes": pa.array([r["face_bboxes"] for r in rows], pa.list_(pa.list_(pa.float64()))),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
            "flag": pa.array([r["flag"] for r in rows], pa.bool_()),
            "f32": pa.array([r["f32"] for r in rows], pa.float32()),
        }
    )
    got = json_objects({name: table[name] for name in table.column_names}).to_pylist()
    assert got == _expected(table.to_pylist())
    assert None in got  # some rows have no value at all: null, not "{}"
    one = json_objects({"face_bboxes": table["face_bboxes"]}).to_pylist()
    assert one == _expected(table.select(["face_bboxes"]).to_pylist())


def test_fixed_size_lists_and_chunked_columns() -> None:
    fixed = pa.array([[0.5, 1.0], None, [2.0, -0.0]], pa.list_(pa.float32(), 2))
    assert json_values(fixed).to_pylist() == ["[0.5, 1.0]", None, "[2.0, -0.0]"]
    chunked = pa.chunked_array([pa.array([[1, 2]], pa.list_(pa.int8())), pa.array([[], None], pa.list_(pa.int8()))])
    assert json_values(chunked).to_pylist() == ["[1, 2]", "[]", None]


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["text"]),  # strings need escaping: the caller's Python path
        pa.array([[float("nan")]], pa.list_(pa.float64())),  # not JSON: json_safe decides
        pa.array([float("inf")]),
        pa.array([{"a": 1}]),
    ],
)
def test_what_it_does_not_encode_is_left_to_the_caller(column: pa.Array) -> None:
    assert json_values(column) is None
    assert json_objects({"x": column, "y": pa.array([1])}) is None
