"""Parquet pools with image bytes and DataComp metadata shards (parquet + npz)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.identity import derive_uid
from curate.readers.base import InputError, ShardRef, list_shards, read_shard
from curate.readers.datacomp_reader import index_npz, read_datacomp_shard
from curate.readers.parquet_reader import guess_image_ext, read_parquet_shard
from schemas.tables import SAMPLE_COLUMNS, SAMPLE_SCHEMA

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _image(fmt: str, i: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + i, 6), (i, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


def _check_sample_schema(table: pa.Table) -> None:
    n = len(SAMPLE_COLUMNS)
    assert table.schema.names[:n] == SAMPLE_COLUMNS
    for field in SAMPLE_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert all(HEX32.match(u) for u in table.column("uid").to_pylist())
    assert table.column("row_in_shard").to_pylist() == list(range(table.num_rows))
    assert set(table.column("shard_rows").to_pylist()) <= {table.num_rows}


# --- Parquet pools with bytes -------------------------------------------------------------------


def _binary_pool(path: Path) -> list[bytes | None]:
    images = [_image("JPEG", 1), _image("PNG", 2), None, b"", _image("WEBP", 3), _image("GIF", 4)]
    table = pa.table(
        {
            "jpg": pa.array(images, pa.binary()),
            "text": [f"cap {i}" for i in range(6)],
            "url": [f"http://example.com/{i}.jpg" for i in range(6)],
            "width": pa.array([10, None, 12, 13, 14, 15], pa.int64()),
            "score": [0.5, float("nan"), 0.7, None, 0.9, 1.0],
            "tags": [["a", "b"], [], None, ["c"], ["d"], ["e"]],
            "thumb": pa.array([b"x"] * 6, pa.binary()),  # bytes never reach meta
        }
    )
    pq.write_table(table, path)
    return images


def test_binary_column_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.parquet"
    images = _binary_pool(path)
    ref = ShardRef(3, str(path), "parquet")
    table = read_parquet_shard(ref)
    _check_sample_schema(table)
    assert table.schema.names == SAMPLE_COLUMNS
    rows = table.to_pylist()
    assert len(rows) == 6 and {r["shard_index"] for r in rows} == {3}
    assert {r["source"] for r in rows} == {str(path)}
    assert [r["caption"] for r in rows] == [f"cap {i}" for i in range(6)]
    assert [r["image_ext"] for r in rows] == ["jpg", "png", None, None, "webp", "gif"]
    failed = "failed_to_read"
    assert [r["status"] for r in rows] == ["success", "success", failed, failed, "success", "success"]
    assert "null" in rows[2]["error_message"] and "empty" in rows[3]["error_message"]
    assert rows[2]["keep"] is False and "failed_to_read" in rows[2]["drop_reason"] and rows[0]["keep"] is True
    assert rows[0]["image"] == images[0] and rows[2]["image"] is None
    assert rows[0]["sha256"] == hashlib.sha256(images[0]).hexdigest() and rows[2]["sha256"] is None
    assert [r["width"] for r in rows] == [10, None, 12, 13, 14, 15]
    # No uid column: derived from url and caption, deterministic.
    assert rows[0]["uid"] == derive_uid("http://example.com/0.jpg", "cap 0")
    assert read_parquet_shard(ref).column("uid").to_pylist() == table.column("uid").to_pylist()
    meta = [json.loads(r["meta"]) for r in rows]
    assert meta[0] == {"score": 0.5, "tags": ["a", "b"]}
    assert meta[1] == {"score": None, "tags": []}  # NaN is not JSON: null
    assert meta[2] == {"score": 0.7}
    assert rows[0]["meta"] == json.dumps(meta[0], sort_keys=True, ensure_ascii=False)


def test_struct_column_pool_with_uid_and_file_url(tmp_path: Path) -> None:
    path = tmp_path / "hf.parquet"
    images = [_image("PNG", 1), None, _image("JPEG", 2)]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": images[0], "path": "a.png"},
                    {"bytes": None, "path": "b.png"},
                    {"bytes": images[2], "path": None},
                ],
                image_type,
            ),
            "caption": ["é caption", None, "c"],
            "uid": ["0X" + "AB" * 16, "not-a-uid", None],
            "key": pa.array([7, 8, 9], pa.int64()),
            "sha256": ["given", None, None],
            "original_height": pa.array([1.0, float("nan"), None], pa.float64()),
        }
    )
    pq.write_table(table, path)
    refs = list_shards(path.as_uri())  # file:// url through fsspec
    assert refs[0].format == "parquet"
    out = read_shard(refs[0])
    _check_sample_schema(out)
    rows = out.to_pylist()
    assert rows[0]["uid"] == "ab" * 16  # provided uid, normalised
    assert rows[1]["uid"] == derive_uid(None, None, None) and json.loads(rows[1]["meta"]) == {
        "image_path": "b.png",
        "source_uid": "not-a-uid",
    }
    assert rows[2]["uid"] == derive_uid(None, "c", hashlib.sha256(images[2]).hexdigest())
    assert [r["key"] for r in rows] == ["7", "8", "9"]
    assert [r["status"] for r in rows] == ["success", "failed_to_read", "success"]
    assert rows[0]["sha256"] == "given" and rows[0]["image_ext"] == "png" and rows[2]["image_ext"] == "jpg"
    assert json.loads(rows[0]["meta"]) == {"image_path": "a.png"} and rows[2]["meta"] is None
    assert [r["original_height"] for r in rows] == [1, None, None]
    assert rows[0]["caption"] == "é caption"


def test_pool_without_image_column_names_columns(tmp_path: Path) -> None:
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": ["a"]}), path)
    with pytest.raises(InputError, match=r"\['url', 'caption'\].*input.format: urls"):
        read_parquet_shard(ShardRef(0, str(path), "parquet"))


def test_pool_status_column_is_kept(tmp_path: Path) -> None:
    # img2dataset's parquet output format: failed rows have null bytes and their own status.
    path = tmp_path / "i2d.parquet"
    pq.write_table(
        pa.table(
            {
                "jpg": pa.array([None, _image("JPEG")], pa.binary()),
                "status": ["failed_to_download", "success"],
                "error_message": ["HTTP Error 404", None],
            }
        ),
        path,
    )
    rows = read_parquet_shard(ShardRef(0, str(path), "parquet")).to_pylist()
    assert rows[0]["status"] == "failed_to_download" and rows[0]["error_message"] == "HTTP Error 404"
    assert rows[1]["status"] == "success"


def test_guess_image_ext() -> None:
    assert [guess_image_ext(_image(f)) for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP")] == [
        "jpg",
        "png",
        "webp",
        "gif",
        "bmp",
    ]
    assert guess_image_ext(b"???") == "jpg"


# --- DataComp ----------------------------------------------------------------------------------


def _datacomp_shard(base: Path, n: int = 5, npz_rows: int | None = None, compressed: bool = False) -> dict:
    rng = np.random.default_rng(0)
    uids = [f"{rng.integers(0, 2**63):016x}{i:016x}".upper() for i in range(n)]
    table = pa.table(
        {
            "uid": uids,
            "url": [f"http://dc/{i}.jpg" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "original_width": pa.array(range(100, 100 + n), pa.int64()),
            "original_height": pa.array(range(50, 50 + n), pa.int64()),
            "clip_b32_similarity_score": pa.array(rng.random(n), pa.float64()),
            "clip_l14_similarity_score": pa.array(rng.random(n).astype(np.float32), pa.float32()),
            "face_bboxes": [[[0.1, 0.2, 0.3, 0.4]] if i % 2 else [] for i in range(n)],
            "sha256": [f"{i:064x}" for i in range(n)],
        }
    )
    pq.write_table(table, base.with_suffix(".parquet"))
    m = n if npz_rows is None else npz_rows
    arrays = {
        "b32_img": rng.standard_normal((m, 4)).astype(np.float16),
        "b32_txt": rng.standard_normal((m, 4)).astype(np.float16),
        "l14_img": rng.standard_normal((m, 6)).astype(np.float32),
        "l14_txt": rng.standard_normal((m, 6)).astype(np.float64),
    }
    (np.savez_compressed if compressed else np.savez)(base.with_suffix(".npz"), **arrays)
    return {"table": table, "arrays": arrays}


@pytest.mark.parametrize("compressed", [False, True])
def test_datacomp_shard(tmp_path: Path, compressed: bool) -> None:
    made = _datacomp_shard(tmp_path / "00000000", compressed=compressed)
    members = {m.name: m for m in index_npz(str(tmp_path / "00000000.npz"))}
    assert (members["l14_img"].data_offset is None) == compressed  # stored members are memory-mapped
    refs = list_shards(str(tmp_path / "*.parquet"))
    assert refs[0].format == "datacomp"
    out = read_shard(refs[0])
    _check_sample_schema(out)
    n = len(SAMPLE_COLUMNS)
    assert out.schema.names[n:] == [
        "clip_b32_similarity_score",
        "clip_l14_similarity_score",
        "b32_img",
        "b32_txt",
        "l14_img",
        "l14_txt",
    ]
    src = made["table"].to_pylist()
    rows = out.to_pylist()
    assert [r["uid"] for r in rows] == [s["uid"].lower() for s in src]
    assert [r["caption"] for r in rows] == [s["text"] for s in src]
    assert [r["original_width"] for r in rows] == [s["original_width"] for s in src]
    assert {r["status"] for r in rows} == {"success"} and all(r["keep"] for r in rows)
    assert {r["image"] for r in rows} == {None} and {r["image_ext"] for r in rows} == {None}
    assert rows[1]["sha256"] == f"{1:064x}"
    assert [json.loads(r["meta"]) for r in rows[:2]] == [{"face_bboxes": []}, {"face_bboxes": [[0.1, 0.2, 0.3, 0.4]]}]
    assert out.schema.field("clip_b32_similarity_score").type == pa.float32()
    np.testing.assert_allclose(
        out.column("clip_b32_similarity_score").to_numpy(),
        made["table"].column("clip_b32_similarity_score").to_numpy(),
        rtol=1e-6,
    )
    for name, arr in made["arrays"].items():
        want = np.float16 if arr.dtype == np.float16 else np.float32
        col = out.column(name).combine_chunks()
        assert col.type == pa.list_(pa.from_numpy_dtype(want), arr.shape[1])
        got = col.values.to_numpy(zero_copy_only=False).reshape(arr.shape)
        np.testing.assert_array_equal(got, arr.astype(want))


def test_datacomp_misaligned_npz(tmp_path: Path) -> None:
    _datacomp_shard(tmp_path / "00000001", n=5, npz_rows=4)
    with pytest.raises(InputError, match=r"00000001\.npz.*\(4, 4\).*00000001\.parquet.*5 rows"):
        read_datacomp_shard(ShardRef(0, str(tmp_path / "00000001.parquet"), "datacomp"))


def test_datacomp_missing_or_broken_npz(tmp_path: Path) -> None:
    _datacomp_shard(tmp_path / "00000002")
    (tmp_path / "00000002.npz").unlink()
    ref = ShardRef(0, str(tmp_path / "00000002.parquet"), "datacomp")
    with pytest.raises(InputError, match=r"no embeddings file .*00000002\.npz"):
        read_datacomp_shard(ref)
    (tmp_path / "00000002.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_datacomp_shard(ref)


def test_datacomp_npz_name_clash_and_1d(tmp_path: Path) -> None:
    base = tmp_path / "s"
    pq.write_table(
        pa.table({"uid": ["a" * 32, "b" * 32], "text": ["x", "y"], "score": [0.1, 0.2]}), base.with_suffix(".parquet")
    )
    with zipfile.ZipFile(base.with_suffix(".npz"), "w") as zf:  # written by hand, like np.savez
        for name, arr in {"score": np.array([1.0, 2.0]), "ids": np.array([3, 4], np.int64)}.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(f"{name}.npy", buf.getvalue())
    out = read_datacomp_shard(ShardRef(0, f"file://{base.with_suffix('.parquet')}", "datacomp"))
    assert out.schema.names[len(SAMPLE_COLUMNS) :] == ["score", "npz_score", "ids"]
    assert out.column("npz_score").to_pylist() == [1.0, 2.0] and out.column("ids").to_pylist() == [3, 4]
    assert out.column("uid").to_pylist() == ["a" * 32, "b" * 32]


def _as_datacomp_writes_it(base: Path, n: int = 7) -> pa.Table:
    """A shard as DataComp's metadata has it: canonical uids, integer sizes, text as strings, nulls."""
    made = _datacomp_shard(base, n=n)["table"]
    table = made.set_column(0, "uid", pa.array([u.lower() for u in made["uid"].to_pylist()]))
    text = ["text 0", None, "  spaced  ", "ünïcödé", "", "text 5", "text 6"][:n]
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(text, pa.string()))
    widths = pa.array([100, None, 300, 4, 5, 6, 7][:n], pa.int64())
    table = table.set_column(table.schema.get_field_index("original_width"), "original_width", widths)
    pq.write_table(table, base.with_suffix(".parquet"))
    return table


def test_datacomp_columns_read_as_the_row_path_reads_them(tmp_path: Path) -> None:
    """DataComp's own shape of metadata is read column by column; the table equals the row path's."""
    from curate.readers import datacomp_reader

    table = _as_datacomp_writes_it(tmp_path / "00000003")
    ref = ShardRef(3, str(tmp_path / "00000003.parquet"), "datacomp")
    caption, meta = "text", ["face_bboxes"]
    columnar = datacomp_reader._columnar_samples(table, ref, caption, meta)
    assert columnar is not None, "DataComp's shape of metadata took the row path"
    rows = datacomp_reader._row_samples(table, ref, caption, meta)
    assert columnar.schema.equals(rows.schema)
    for name in columnar.column_names:
        assert columnar[name].equals(rows[name]), name
    assert read_datacomp_shard(ref).select(SAMPLE_COLUMNS).equals(rows)


@pytest.mark.parametrize("odd", [None, float("nan"), float("inf")])
def test_datacomp_meta_of_empty_null_and_full_values_equals_the_row_path(tmp_path: Path, odd) -> None:
    """``meta`` without a Python call per row for null and empty-list values, and without
    ``json_safe`` for plain ones: every mix of them over two list columns and a scalar one gives the
    row path's JSON, row by row, also with a value JSON cannot hold (NaN, inf: null in both)."""
    from curate.readers import datacomp_reader

    table = _as_datacomp_writes_it(tmp_path / "00000004")
    faces = [[], None, [[0.5, 0.25, 1.0, 0.75]], [], None, [[0.1, 0.2, 0.3, 0.4 if odd is None else odd]], []]
    tags = [[], [], None, None, ["a", "b"], [], ["c"]]
    notes = [None, "x", None, None, "y", None, None]
    table = table.set_column(table.schema.get_field_index("face_bboxes"), "face_bboxes", pa.array(faces))
    table = table.append_column("tags", pa.array(tags, pa.list_(pa.string())))
    table = table.append_column("notes", pa.array(notes, pa.string()))
    ref = ShardRef(4, str(tmp_path / "00000004.parquet"), "datacomp")
    meta = ["face_bboxes", "tags", "notes"]
    columnar = datacomp_reader._columnar_samples(table, ref, "text", meta)
    rows = datacomp_reader._row_samples(table, ref, "text", meta)
    assert columnar["meta"].to_pylist() == rows["meta"].to_pylist()
    assert len(set(rows["meta"].to_pylist())) == 7  # every row a different mix


@pytest.mark.parametrize(
    "change",
    ["uppercase uid", "uid not hex", "null uid", "status column", "float sizes", "numeric caption"],
)
def test_datacomp_columns_that_need_converting_take_the_row_path(tmp_path: Path, change: str) -> None:
    from curate.readers import datacomp_reader

    table = _as_datacomp_writes_it(tmp_path / "00000000")
    uids = table["uid"].to_pylist()
    if change == "uppercase uid":
        table = table.set_column(0, "uid", pa.array([uids[0].upper(), *uids[1:]]))
    elif change == "uid not hex":
        table = table.set_column(0, "uid", pa.array(["not-a-uid", *uids[1:]]))
    elif change == "null uid":
        table = table.set_column(0, "uid", pa.array([None, *uids[1:]], pa.string()))
    elif change == "status column":
        table = table.append_column("status", pa.array(["success"] * table.num_rows))
    elif change == "float sizes":
        i = table.schema.get_field_index("original_height")
        table = table.set_column(i, "original_height", table["original_height"].cast(pa.float64()))
    else:
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(range(table.num_rows)))
    ref = ShardRef(0, str(tmp_path / "00000000.parquet"), "datacomp")
    assert datacomp_reader._columnar_samples(table, ref, "text", ["face_bboxes"]) is None


def test_datacomp_array_columns_follow_a_changed_npz(tmp_path: Path) -> None:
    """The header names are read once per file (each stage and the sink ask for them), and read again
    when the npz changes (its size or modification time)."""
    from curate.readers.datacomp_reader import DataCompReader

    base = tmp_path / "00000000"
    _datacomp_shard(base)
    ref = ShardRef(0, str(base.with_suffix(".parquet")), "datacomp")
    reader = DataCompReader()
    assert reader.array_columns(ref) == ["b32_img", "b32_txt", "l14_img", "l14_txt"]
    np.savez(base.with_suffix(".npz"), other=np.zeros((5, 3), np.float32), more=np.zeros((5, 2), np.float16))
    os.utime(base.with_suffix(".npz"), ns=(1, 1))  # a different stamp even within the clock's resolution
    assert reader.array_columns(ref) == ["other", "more"]
    assert reader.read_arrays(ref, ["more"])["more"].type == pa.list_(pa.float16(), 2)


def test_sample_parquet_has_dictionaries_only_for_text_that_repeats(tmp_path: Path) -> None:
    """uids, urls and captions are all different: a dictionary would be written for nothing; status
    and reasons repeat and keep one; numbers never get one."""
    from curate.stage_store import write_sample_parquet

    n = 3000
    table = pa.table(
        {
            "uid": [f"{i:032x}" for i in range(n)],
            "status": ["success"] * n,
            "drop_reason": [None, "too_small", "non_english"] * (n // 3),
            "score": pa.array(np.linspace(0, 1, n), pa.float32()),
        }
    )
    write_sample_parquet(table, tmp_path / "s.parquet")
    meta = pq.ParquetFile(tmp_path / "s.parquet").metadata.row_group(0)
    dictionary = {
        meta.column(j).path_in_schema
        for j in range(meta.num_columns)
        if any("DICTIONARY" in e for e in meta.column(j).encodings)
    }
    assert dictionary == {"status", "drop_reason"}
    assert pq.read_table(tmp_path / "s.parquet").equals(table)


_PROJECTED = ["shard_index", "row_in_shard", "status", "error_message", "keep", "drop_reason", "decisions"]


@pytest.mark.parametrize("shape", ["datacomp", "uppercase uids", "status column", "error_message column", "1-D clash"])
def test_datacomp_read_columns_equal_the_whole_read(tmp_path: Path, shape: str) -> None:
    """What stage 0 of a recipe starting with a global step reads (keys, bookkeeping, a score, an
    embedding) equals those columns of the whole read, values and types, whatever the shard's shape;
    the column names from the headers alone are the whole read's."""
    from curate.readers.datacomp_reader import DataCompReader

    base = tmp_path / "00000002"
    if shape == "1-D clash":
        pq.write_table(
            pa.table({"uid": ["a" * 32, "b" * 32], "text": ["x", "y"], "clip_l14_similarity_score": [0.5, 0.25]}),
            base.with_suffix(".parquet"),
        )
        np.savez(base.with_suffix(".npz"), clip_l14_similarity_score=np.array([1.0, 2.0]), l14_img=np.ones((2, 3)))
    elif shape == "datacomp":
        _as_datacomp_writes_it(base)
    else:
        table = _datacomp_shard(base)["table"]  # uppercase uids: the row path
        if shape != "uppercase uids":
            extra = ["success", "failed_download", "success", "success", "success"]
            table = table.append_column(shape.split()[0], pa.array(extra))
            pq.write_table(table, base.with_suffix(".parquet"))
    ref = ShardRef(2, str(base.with_suffix(".parquet")), "datacomp")
    reader = DataCompReader()
    whole = read_datacomp_shard(ref)
    assert reader.column_names(ref) == whole.column_names
    for names in (_PROJECTED, [*_PROJECTED, "clip_l14_similarity_score", "l14_img"], ["uid", "l14_img", "caption"]):
        got = reader.read_columns(ref, names)
        want = whole.select([c for c in whole.column_names if c in names])
        assert got.schema.equals(want.schema), (names, got.schema, want.schema)
        assert got.equals(want), names
    if shape.endswith("column"):  # the shard's own status: nothing is assumed
        assert reader.read_columns(ref, _PROJECTED)[shape.split()[0]].to_pylist()[1] == "failed_download"


def test_datacomp_headers_are_read_once_per_file(tmp_path: Path, monkeypatch) -> None:
    """Preflight, each stage's read and the sink ask for a shard's npz header: it is read once while
    the files stay the same (a 10M-row pool has 1000 npz to index)."""
    from curate.readers import datacomp_reader

    _datacomp_shard(tmp_path / "00000005")
    ref = ShardRef(5, str(tmp_path / "00000005.parquet"), "datacomp")
    calls = []
    index = datacomp_reader.index_npz
    monkeypatch.setattr(datacomp_reader, "index_npz", lambda path: calls.append(path) or index(path))
    reader = datacomp_reader.DataCompReader()
    reader.preflight([ref], {})
    whole = reader.read(ref)
    assert reader.read_columns(ref, ["row_in_shard", "l14_img"]).equals(whole.select(["row_in_shard", "l14_img"]))
    assert reader.array_columns(ref) == ["b32_img", "b32_txt", "l14_img", "l14_txt"]
    assert reader.column_names(ref) == whole.column_names
    assert calls == [str(tmp_path / "00000005.npz")]


def test_datacomp_read_columns_of_a_missing_or_broken_shard_name_it(tmp_path: Path) -> None:
    from curate.readers.datacomp_reader import DataCompReader

    base = tmp_path / "00000006"
    _datacomp_shard(base)
    ref = ShardRef(6, str(base.with_suffix(".parquet")), "datacomp")
    base.with_suffix(".parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"00000006\.parquet.*not a readable Parquet"):
        DataCompReader().read_columns(ref, ["row_in_shard"])
    base.with_suffix(".parquet").unlink()
    with pytest.raises(InputError, match=r"00000006\.parquet.* does not exist"):
        DataCompReader().read_columns(ref, ["row_in_shard"])
