"""image_check on damaged JPEGs: bytes overwritten inside an intact JPEG's scan, which PIL decodes
without an error. Measured against the synthetic pool's ground truth (fault ``damaged_jpeg``)."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

import filters.image_check  # noqa: F401 - registers the step
from curate.readers.base import list_shards, read_shard
from curate.steps import StepRunner
from curate.synth import FaultRates, load_ground_truth, make_pool
from schemas.tables import STATUS_FAILED_DECODE


@pytest.fixture(scope="module")
def damaged_pool(tmp_path_factory) -> tuple[pa.Table, dict[str, str]]:
    """120 samples, half of them damaged JPEGs, the rest clean: the table and each uid's fault."""
    folder = tmp_path_factory.mktemp("damaged_pool")
    rates = FaultRates(**{**FaultRates.none().as_dict(), "damaged_jpeg": 0.5})
    make_pool(str(folder), samples=120, shard_size=120, seed=21, faults=rates)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])
    truth = load_ground_truth(str(folder))
    return table, dict(zip(truth["uid"].to_pylist(), truth["fault"].to_pylist(), strict=True))


def _pil_decodes(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
    return True


def test_damaged_jpegs_libjpeg_notices_fail_and_clean_ones_pass(damaged_pool):
    table, fault = damaged_pool
    out = StepRunner("image_check", "image_check", {})(table)
    damaged = [fault[uid] == "damaged_jpeg" for uid in out["uid"].to_pylist()]
    assert 30 < sum(damaged) < 90
    assert all(_pil_decodes(data) for data in table["image"].to_pylist())  # PIL sees nothing wrong
    status, errors = out["status"].to_pylist(), out["error_message"].to_pylist()
    warnings = out["image_warning"].to_pylist()
    caught = 0
    for is_damaged, st, err, warning in zip(damaged, status, errors, warnings, strict=True):
        if not is_damaged:
            assert st == "success" and warning is None, (err, warning)  # no false alarm on a clean JPEG
        elif warning is not None:
            caught += 1
            assert st == STATUS_FAILED_DECODE and err == f"damaged JPEG data: {warning}"
            assert warning.startswith(("Corrupt JPEG data", "Premature end of JPEG file")), warning
        else:
            assert st == "success"  # damage libjpeg does not notice decodes in every decoder: it passes
    # About two in three are caught on this fault (the module docstring of filters.image_check).
    assert caught >= 0.5 * sum(damaged), (caught, sum(damaged))


def test_keep_passes_damaged_jpegs_with_their_warning(damaged_pool):
    table, _ = damaged_pool
    failing = StepRunner("image_check", "image_check", {})(table)
    keeping = StepRunner("image_check", "image_check", {"damaged_jpeg": "keep"})(table)
    assert keeping["image_warning"].to_pylist() == failing["image_warning"].to_pylist()
    assert set(keeping["status"].to_pylist()) == {"success"}
    assert failing["image_warning"].null_count < failing.num_rows


def test_an_unknown_damaged_jpeg_mode_names_the_field():
    with pytest.raises(ValueError, match="damaged_jpeg"):
        StepRunner("image_check", "image_check", {"damaged_jpeg": "repair"})
