"""download_url_pool against a local HTTP server: successes, failures, and incremental re-runs."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import braceexpand
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.readers.base import InputError, list_shards, read_shard
from curate.readers.url_pool import download_kwargs, download_url_pool, shard_pattern
from schemas.tables import SAMPLE_COLUMNS

N_ROWS = 30
PER_SHARD = 10


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []  # replaced per server
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.lock:
            self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})

    def factory(*args: object, **kwargs: object) -> http.server.BaseHTTPRequestHandler:
        return handler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# Real English sentences, so that fastText (the basic step's language id) calls them English.
CAPTIONS = (
    "A brown dog runs across the green field",
    "Two children are building a sandcastle on the beach",
    "An old red barn stands at the edge of the farm",
    "A cup of hot coffee sits on a wooden table",
    "Fresh vegetables for sale at the morning market",
    "A small boat is sailing on a calm blue lake",
)
# Rows that download but that the basic recipe drops, each for its own reason: (caption, size) and
# the reason the run records. Every other downloaded row passes basic (min side >= 200, aspect <= 3).
BASIC_DROPS = {
    7: (None, (48, 36), "basic:image_too_small"),
    13: ("Ein roter Hund spielt im Garten mit einem Ball", None, "basic:non_english"),
    19: ("a cat", None, "basic:caption_too_short"),
    29: (None, (660, 200), "basic:extreme_aspect_ratio"),
}


def _image(i: int, size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (i * 8 % 256, 100, 200)).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def _make_pool(base_url: str, root: Path, tmp_path: Path) -> tuple[Path, dict[str, dict]]:
    """30 rows: 26 JPEGs, 1 PNG, 2 missing (404), 1 not an image; 4 of the images or captions fail
    basic (``BASIC_DROPS``). Returns the pool and rows by uid, with the reason the run drops each."""
    expected: dict[str, dict] = {}
    rows = []
    for i in range(N_ROWS):
        uid = f"{i:032x}"
        caption, size, reason = BASIC_DROPS.get(i, (None, None, None))
        caption = caption or CAPTIONS[i % len(CAPTIONS)]
        size = size or (256 + i, 210 + i)
        if i in (5, 17):
            name, kind, data, reason = f"missing_{i}.jpg", "404", None, "read:failed_to_download"
        elif i == 11:
            name, kind, data = "junk.jpg", "junk", b"this is not an image, just text\n" * 4
            reason = "read:failed_to_resize"
        elif i == 23:
            name, kind, data = f"img_{i}.png", "png", _image(i, size, "PNG")
        else:
            name, kind, data = f"img_{i}.jpg", "jpg", _image(i, size, "JPEG")
        if data is not None:
            (root / name).write_bytes(data)
        url = f"{base_url}/{name}"
        rows.append({"url": url, "caption": caption, "uid": uid, "lang": "en"})
        expected[uid] = {
            "i": i,
            "kind": kind,
            "url": url,
            "path": f"/{name}",
            "caption": caption,
            "sha256": hashlib.sha256(data).hexdigest() if data else None,
            "drop_reason": reason,
        }
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pool)
    return pool, expected


def _tar_samples(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return samples


def _snapshot(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


def test_download_url_pool_end_to_end(server: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base_url, root, requests = server
    pool, expected = _make_pool(base_url, root, tmp_path)
    out = tmp_path / "download"

    pattern = download_url_pool(
        str(pool), str(out), processes=1, threads=4, timeout=5, samples_per_shard=PER_SHARD, extra_columns=["lang"]
    )
    assert pattern == f"{out}/{{00000..00002}}.tar"
    tars = list(braceexpand.braceexpand(pattern))
    assert [os.path.basename(t) for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(requests) == sorted(e["path"] for e in expected.values())

    listed = pa.concat_tables([pq.read_table(t[:-4] + ".parquet") for t in tars]).to_pylist()
    by_uid = {r["uid"]: r for r in listed}
    assert len(listed) == N_ROWS and set(by_uid) == set(expected)
    in_tar: dict[str, dict[str, bytes]] = {}
    for t in tars:
        in_tar.update(_tar_samples(t))
    for uid, e in expected.items():
        rec = by_uid[uid]
        assert rec["url"] == e["url"] and rec["caption"] == e["caption"] and rec["lang"] == "en"
        # Keys are shard_id * 10**ceil(log10(per_shard)) + row, 5 + 1 digits here.
        assert len(rec["key"]) == 6 and rec["key"][:5] == f"{e['i'] // PER_SHARD:05d}"
        if e["kind"] == "404":
            assert rec["status"] == "failed_to_download" and "404" in rec["error_message"]
            assert rec["key"] not in in_tar
        elif e["kind"] == "junk":
            # img2dataset names a decode failure failed_to_resize.
            assert rec["status"] == "failed_to_resize" and rec["error_message"]
            assert rec["key"] not in in_tar
        else:
            assert rec["status"] == "success" and rec["error_message"] is None
            assert rec["sha256"] == e["sha256"]  # hash of the bytes as served
            sample = in_tar[rec["key"]]
            assert set(sample) == {"jpg", "txt", "json"}
            assert sample["txt"].decode() == e["caption"]
            assert json.loads(sample["json"])["uid"] == uid
            if e["kind"] == "jpg":  # a JFIF JPEG is stored byte for byte
                assert hashlib.sha256(sample["jpg"]).hexdigest() == e["sha256"]
            else:  # anything else is re-encoded to JPEG
                assert sample["jpg"][:3] == b"\xff\xd8\xff"
    stats = [json.loads((out / f"0000{i}_stats.json").read_text()) for i in range(3)]
    assert sum(s["successes"] for s in stats) == 27
    assert sum(s["failed_to_download"] for s in stats) == 2 and sum(s["failed_to_resize"] for s in stats) == 1

    # Second run: everything is done, nothing is fetched or rewritten.
    before = _snapshot(out)
    requests.clear()
    assert (
        download_url_pool(str(pool), str(out), threads=4, samples_per_shard=PER_SHARD, extra_columns=["lang"])
        == pattern
    )
    assert requests == [] and _snapshot(out) == before

    # A shard killed before it finished has no stats file: img2dataset's incremental mode
    # downloads only that shard again and leaves the finished ones alone.
    (out / "00001_stats.json").unlink()
    (out / "00001.tar").write_bytes(b"partial")
    requests.clear()
    assert (
        download_url_pool(str(pool), str(out), threads=4, samples_per_shard=PER_SHARD, extra_columns=["lang"])
        == pattern
    )
    assert sorted(requests) == sorted(e["path"] for e in expected.values() if e["i"] // PER_SHARD == 1)
    assert len(_tar_samples(str(out / "00001.tar"))) == sum(
        1 for e in expected.values() if e["i"] // PER_SHARD == 1 and e["kind"] in ("jpg", "png")
    )
    assert len(list(out.glob("*.tar"))) == 3
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("00001")} == {
        k: v for k, v in before.items() if not k.startswith("00001")
    }

    # The project's tar reader reads the result: one row per pool row, carrying the pool's uids.
    table = pa.concat_tables(read_shard(ref) for ref in list_shards(pattern))
    assert table.column_names[: len(SAMPLE_COLUMNS)] == SAMPLE_COLUMNS
    assert table.num_rows == N_ROWS
    assert table.column("status").to_pylist().count("success") == 27
    assert sorted(table.column("uid").to_pylist()) == sorted(expected)


def test_pool_validation_errors(tmp_path: Path) -> None:
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"link": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"], "status": ["x"]}), pool)
    with pytest.raises(InputError, match="no url column 'url'"):
        download_url_pool(str(pool), str(tmp_path / "o"))
    with pytest.raises(InputError, match="written by img2dataset"):
        download_url_pool(str(pool), str(tmp_path / "o"), url_col="link", extra_columns=["status"])
    with pytest.raises(InputError, match="not in url pool"):
        download_url_pool(str(pool), str(tmp_path / "o"), url_col="link", extra_columns=["nope"])
    with pytest.raises(InputError, match="must end with"):
        download_url_pool(str(tmp_path / "pool.txt"), str(tmp_path / "o"))
    out = tmp_path / "busy"
    out.mkdir()
    (out / "sizes.json").write_text("{}")
    with pytest.raises(InputError, match="folder of its own"):
        download_url_pool(str(pool), str(out), url_col="link")


def test_shard_pattern_forms() -> None:
    assert shard_pattern("s3://b/d/", ["00000"]) == "s3://b/d/00000.tar"
    assert shard_pattern("d", ["00003", "00004"]) == "d/{00003..00004}.tar"
    assert shard_pattern("d", ["00000", "00002"]) == "d/{00000,00002}.tar"
    expanded = list(braceexpand.braceexpand(shard_pattern("d", ["00009", "00010"])))
    assert expanded == ["d/00009.tar", "d/00010.tar"]


def test_kwargs_for_csv_pool_without_uid_or_caption(tmp_path: Path) -> None:
    pool = tmp_path / "pool.csv"
    pool.write_text("link,other\nhttp://127.0.0.1:1/0.jpg,0\n")
    kwargs, rows = download_kwargs(str(pool), str(tmp_path / "o"), url_col="link", samples_per_shard=7)
    assert rows is None  # only known cheaply for Parquet
    assert kwargs["input_format"] == "csv" and kwargs["url_col"] == "link"
    assert kwargs["caption_col"] is None and kwargs["save_additional_columns"] is None
    assert kwargs["number_sample_per_shard"] == 7 and kwargs["incremental_mode"] == "incremental"
    assert kwargs["output_format"] == "webdataset" and kwargs["resize_mode"] == "no" and kwargs["skip_reencode"]
    assert json.loads(json.dumps(kwargs)) == kwargs  # passed to the child as JSON
    pq.write_table(pa.table({"url": ["u"], "uid": ["a" * 32], "x": [1]}), tmp_path / "p.parquet")
    kwargs, rows = download_kwargs(str(tmp_path / "p.parquet"), "o", extra_columns=["x", "uid"])
    assert rows == 1 and kwargs["save_additional_columns"] == ["uid", "x"] and kwargs["caption_col"] is None


def _samples_by_uid(tars: list[Path]) -> dict[str, dict[str, bytes]]:
    """Every sample of the tars, by the uid in its json."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in tars:
        for sample in _tar_samples(str(tar)).values():
            uid = json.loads(sample["json"])["uid"]
            assert uid not in out, f"{uid} written twice"
            out[uid] = sample
    return out


def test_url_pool_recipe_runs_end_to_end(server: tuple[str, Path, list[str]], tmp_path: Path, ray_session) -> None:
    """`input.format: urls`: the runner downloads into RUN/_download, then curates the shards; the
    samples basic keeps reach the output shards with the image bytes img2dataset stored."""
    from curate.catalog import connect
    from curate.config import load_recipe
    from curate.runner import run_recipe

    base_url, root, _ = server
    pool, expected = _make_pool(base_url, root, tmp_path)
    recipe = load_recipe(
        "basic",
        ["input.format=urls", "input.samples_per_shard=10", "input.download_threads=4"],
        input_path=str(pool),
        output_path=str(tmp_path / "run"),
    )
    result = run_recipe(recipe)
    assert result.stats["rows"] == 30
    assert result.stats["status"].get("failed_to_download") == 2

    with connect(tmp_path / "run") as con:
        rows = con.sql("select uid, keep, drop_reason from samples").fetchall()
    decided = {uid: (keep, reason) for uid, keep, reason in rows}
    assert decided == {uid: (e["drop_reason"] is None, e["drop_reason"]) for uid, e in expected.items()}
    kept = {uid for uid, e in expected.items() if e["drop_reason"] is None}
    assert len(kept) == 23  # 27 downloaded, less the 4 rows made to fail basic

    downloaded = _samples_by_uid(sorted((tmp_path / "run" / "_download").glob("*.tar")))
    written = _samples_by_uid(sorted((tmp_path / "run" / "shards").glob("*.tar")))
    assert set(written) == kept and result.stats["written"] == len(kept)
    assert sum(json.loads((tmp_path / "run" / "shards" / "sizes.json").read_text()).values()) == len(kept)
    for uid in kept:
        sample, e = written[uid], expected[uid]
        assert set(sample) == {"jpg", "txt", "json"} and sample["txt"].decode() == e["caption"]
        # The bytes of img2dataset's shard, not of the served file: it re-encodes the PNG to JPEG.
        assert sample["jpg"] == downloaded[uid]["jpg"], f"row {e['i']}: image bytes changed on the way"
        if e["kind"] == "jpg":  # and a JFIF JPEG is the served file itself
            assert hashlib.sha256(sample["jpg"]).hexdigest() == e["sha256"]
