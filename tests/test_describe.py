"""Dense descriptions from the ground truth, what a caption names, and the web alt-text faults."""

from __future__ import annotations

from collections import Counter

from curate.synth import FaultRates, make_pool
from curate.synth.describe import dense_description, named_shapes, short_caption, true_shapes
from curate.synth.scoring import pool_metas

META = {
    "width": 300,
    "height": 300,
    "gt": {
        "shapes": [
            {"label": "star", "color": "blue", "size": "small", "bbox": [10, 10, 40, 40]},
            {"label": "circle", "color": "red", "size": "large", "bbox": [100, 100, 250, 250]},
        ],
        "background": "striped",
        "text": {"word": "COFFEE", "box": [0, 0, 1, 1]},
    },
}


def test_dense_description_names_every_shape_largest_first():
    assert dense_description(META) == (
        "A large red circle in the center. A small blue star in the top left. "
        'The background is striped. A sign reads "COFFEE".'
    )
    assert short_caption(META) == "A red circle and blue star."
    assert named_shapes(dense_description(META)) == true_shapes(META) == {"red circle", "blue star"}


def test_named_shapes_folds_plurals_and_case():
    assert named_shapes("Two Red Circles and a blue starS, green") == {"red circle", "blue star"}
    assert named_shapes(None) == set()


def test_alt_text_faults_undersell_the_image(tmp_path):
    rates = FaultRates(
        **{**FaultRates.none().as_dict(), "alt_largest_only": 0.3, "alt_vague": 0.2, "alt_filename": 0.2}
    )
    make_pool(str(tmp_path), samples=120, shard_size=120, seed=3, faults=rates)
    metas = pool_metas(tmp_path)
    faults = Counter(m["gt"]["fault"] for m in metas.values())
    assert {"alt_largest_only", "alt_vague", "alt_filename", "none"} <= set(faults)
    for m in metas.values():
        named, truth = named_shapes(m["caption"]), true_shapes(m)
        if m["gt"]["fault"] == "alt_largest_only":
            assert len(named) == 1 and named <= truth, m["caption"]
        elif m["gt"]["fault"] in ("alt_vague", "alt_filename"):
            assert not named, m["caption"]
        assert m["gt"]["true_caption"] and named_shapes(m["gt"]["true_caption"]) <= truth


def test_pools_without_alt_text_faults_keep_their_bytes(tmp_path):
    """The alt-text faults come last with rate 0: a default pool is the same as before they existed."""
    make_pool(str(tmp_path / "a"), samples=30, shard_size=30, seed=5)
    metas = pool_metas(tmp_path / "a")
    assert not any(m["gt"]["fault"].startswith("alt_") for m in metas.values())
