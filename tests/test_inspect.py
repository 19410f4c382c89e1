"""``curate inspect RUN UID``: one sample's fields, decisions and image, as the run recorded them."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from curate.catalog import connect
from curate.inspect_sample import describe, inspect_sample, save_image


def _one(run, where: str) -> dict:
    with connect(run) as con:
        cur = con.execute(f"SELECT uid, key, source, drop_reason FROM samples WHERE {where} ORDER BY uid LIMIT 1")
        return dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))


def _member(source: str, key: str) -> bytes:
    with tarfile.open(source) as tar:
        return tar.extractfile(f"{key}.jpg").read()


def test_inspect_shows_a_dropped_sample_with_its_decision_and_saves_its_image(basic_run, tmp_path):
    run = basic_run.run_dir.root
    dropped = _one(run, "drop_reason = 'basic:non_english'")
    report = inspect_sample(run, dropped["uid"])
    assert report.fields["lang"] != "en" and report.fields["keep"] is False
    assert {"step": "basic", "keep": False, "drop_reason": "non_english"} in report.decisions
    assert "  basic: dropped (non_english)" in describe(report)
    # The image comes from the input by byte range, exactly as stored there (it is in no output tar).
    n = save_image(run, dropped["uid"], tmp_path / "dropped.jpg")
    assert (tmp_path / "dropped.jpg").read_bytes() == _member(dropped["source"], dropped["key"]) and n > 0


def test_inspect_cli_prints_json_and_fails_naming_an_unknown_uid(basic_run, tmp_path):
    run = basic_run.run_dir.root
    kept = _one(run, "keep")
    cmd = [sys.executable, "-m", "curate.cli", "inspect", str(run)]
    shown = subprocess.run(
        [*cmd, kept["uid"], "--format", "json", "--save-image", str(tmp_path / "k.jpg")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    payload = json.loads(shown.stdout[: shown.stdout.rindex("}") + 1])
    assert payload["uid"] == kept["uid"] and payload["fields"]["keep"] is True
    assert (tmp_path / "k.jpg").read_bytes() == _member(kept["source"], kept["key"])
    missing = subprocess.run([*cmd, "0" * 32], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "uid: value '00000000000000000000000000000000' is not a sample" in missing.stderr
    with pytest.raises(ValueError, match="is not a sample"):
        inspect_sample(run, "f" * 32)
