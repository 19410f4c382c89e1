"""Synthetic "shapes world" pools in img2dataset's exact webdataset output format, with ground truth.

Usage::

    from curate.synth import make_pool, FaultRates
    summary = make_pool("/tmp/pool", samples=1000, shard_size=100, seed=0)
"""

from curate.synth.faults import FaultRates
from curate.synth.pool import make_pool
from curate.synth.truth import load_ground_truth
from curate.synth.vocab import BACKGROUNDS, COLORS, FAULTS, LANGUAGES, SHAPES, SIZES

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "FAULTS",
    "LANGUAGES",
    "SHAPES",
    "SIZES",
    "FaultRates",
    "load_ground_truth",
    "make_pool",
]
