"""Reading img2dataset output and plain WebDataset tars, damaged ones included."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.identity import derive_uid
from curate.readers.base import InputError, ShardRef, list_shards, read_shard
from schemas.tables import SAMPLE_COLUMNS


def _jpeg(color=(200, 10, 10), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_plain_webdataset_rows_follow_the_tar(tmp_path):
    _write_tar(
        tmp_path / "a.tar",
        [
            (
                "s1",
                {"jpg": _jpeg(), "txt": b"a red box", "json": json.dumps({"url": "http://x/1", "extra": 5}).encode()},
            ),
            ("s2", {"png": _jpeg(), "txt": "caf\xe9".encode("latin-1")}),  # caption not utf-8
            ("s3", {"txt": b"no image here"}),
        ],
    )
    (ref,) = list_shards(str(tmp_path / "a.tar"))
    assert ref.format == "webdataset"
    table = read_shard(ref)
    assert table.column_names[: len(SAMPLE_COLUMNS)] == SAMPLE_COLUMNS
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == ["s1", "s2", "s3"]
    assert rows[0]["uid"] == derive_uid("http://x/1", "a red box")
    assert json.loads(rows[0]["meta"]) == {"extra": 5}
    assert rows[1]["caption"] == "caf\ufffd" and "caption_encoding_error" in json.loads(rows[1]["meta"])
    assert rows[2]["status"] == "failed_to_read" and rows[2]["error_message"] == "sample has no image member"
    assert [r["keep"] for r in rows] == [True, True, False]
    assert all(r["shard_rows"] == 3 for r in rows) and [r["row_in_shard"] for r in rows] == [0, 1, 2]


def test_truncated_plain_tar_yields_readable_samples_and_records_the_break(tmp_path):
    path = tmp_path / "t.tar"
    _write_tar(path, [(f"k{i}", {"jpg": _jpeg(size=(300, 300)), "txt": b"caption %d" % i}) for i in range(6)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    table = read_shard(ShardRef(3, str(path), "webdataset"))
    ok = table.filter(pa.compute.equal(table["status"], "success"))
    assert 0 < ok.num_rows < 6
    last = table.to_pylist()[-1]
    assert last["status"] == "failed_to_read" and "tar unreadable" in last["error_message"]
    assert table["shard_index"].to_pylist() == [3] * table.num_rows


def test_img2dataset_parquet_is_the_authority(tmp_path):
    rows = []
    samples = []
    for i in range(4):
        key = f"0000{i}"
        status = "failed_to_download" if i == 3 else "success"
        rows.append(
            {
                "key": key,
                "caption": f"caption {i}",
                "url": f"http://x/{i}",
                "status": status,
                "error_message": "HTTP Error 404" if i == 3 else None,
                "width": 64,
                "height": 48,
                "original_width": 640,
                "original_height": 480,
                "exif": None,
                "sha256": None,
                "uid": f"{i:032X}",
            }
        )
        if status == "success" and i != 2:  # sample 2 is listed but missing from the tar
            samples.append(
                (key, {"jpg": _jpeg(), "txt": f"caption {i}".encode(), "json": json.dumps(rows[-1]).encode()})
            )
    _write_tar(tmp_path / "00000.tar", samples)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "00000.parquet")
    (ref,) = list_shards(f"{tmp_path}/{{00000..00000}}.tar")
    assert ref.format == "img2dataset"
    out = read_shard(ref).to_pylist()
    assert [r["status"] for r in out] == ["success", "success", "failed_to_read", "failed_to_download"]
    assert [r["uid"] for r in out] == [f"{i:032x}" for i in range(4)]  # normalised from the pool
    assert out[0]["original_width"] == 640 and out[0]["image"] is not None
    assert out[3]["error_message"] == "HTTP Error 404" and out[3]["drop_reason"] == "read:failed_to_download"


def test_listing_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="matches no"):
        list_shards(str(tmp_path / "*.tar"))
    with pytest.raises(InputError, match="do not exist"):
        list_shards(str(tmp_path / "{0..1}.tar"))


def test_fsspec_url_input(tmp_path):
    _write_tar(tmp_path / "u.tar", [("s1", {"jpg": _jpeg(), "txt": b"hello there world"})])
    (ref,) = list_shards(f"file://{tmp_path}/u.tar")
    assert read_shard(ref).num_rows == 1


def test_a_key_seen_again_apart_from_its_sample_is_a_failed_row(tmp_path):
    """Without the check, the second k1 would merge into the first: its txt would replace the first's."""
    first, second = _jpeg((200, 10, 10)), _jpeg((10, 200, 10))
    _write_tar(
        tmp_path / "d.tar",
        [
            ("k1", {"jpg": first, "txt": b"the first red one"}),
            ("k2", {"jpg": _jpeg(), "txt": b"another sample here"}),
            ("k1", {"jpg": second, "txt": b"the second green one"}),
        ],
    )
    (ref,) = list_shards(str(tmp_path / "d.tar"))
    rows = read_shard(ref).to_pylist()
    assert [(r["key"], r["status"]) for r in rows] == [
        ("k1", "success"),
        ("k2", "success"),
        ("k1", "failed_duplicate_key"),
    ]
    assert rows[0]["image"] == first and rows[0]["caption"] == "the first red one"
    assert rows[2]["image"] is None and rows[2]["error_message"].startswith("duplicate_key:")
    assert not rows[2]["keep"] and rows[2]["drop_reason"] == "read:failed_duplicate_key"


def test_image_bytes_are_fetched_again_by_byte_range(tmp_path):
    from curate.readers.base import fetch_images

    images = [_jpeg((i * 40, 10, 10)) for i in range(5)]
    _write_tar(tmp_path / "r.tar", [(f"s{i}", {"txt": b"caption %d" % i, "jpg": img}) for i, img in enumerate(images)])
    (ref,) = list_shards(str(tmp_path / "r.tar"))
    table = read_shard(ref)
    offsets = table["image_offset"].to_pylist()
    assert all(o is not None and o % 512 == 0 for o in offsets) and table["image_size"].to_pylist() == [
        len(i) for i in images
    ]
    wanted = table.drop_columns(["image"]).take([4, 1, 3])
    assert fetch_images(ref, wanted) == [images[4], images[1], images[3]]
    # A compressed tar has no file offsets: the bytes are found by key instead.
    import gzip

    (tmp_path / "z.tar.gz").write_bytes(gzip.compress((tmp_path / "r.tar").read_bytes()))
    zref = ShardRef(0, str(tmp_path / "z.tar.gz"), "webdataset")
    ztable = read_shard(zref)
    assert ztable["image_offset"].null_count == 5
    assert fetch_images(zref, ztable.drop_columns(["image"]).take([2, 0])) == [images[2], images[0]]
