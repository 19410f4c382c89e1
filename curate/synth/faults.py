"""Fault rates: which share of the pool carries each injected defect (at most one per sample)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from curate.synth.vocab import FAULTS


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per sample; the rest of the pool is clean (fault ``"none"``)."""

    swapped_caption: float = 0.03
    non_english: float = 0.04
    too_short: float = 0.03
    empty_caption: float = 0.02
    tiny_image: float = 0.03
    extreme_aspect: float = 0.03
    near_duplicate: float = 0.04
    corrupt_image: float = 0.02
    failed_download: float = 0.05
    alt_largest_only: float = 0.0  # names only the largest shape
    alt_vague: float = 0.0  # names no shape ("colorful abstract art")
    alt_filename: float = 0.0  # a camera file name ("IMG_4821.JPG")
    damaged_jpeg: float = 0.0  # a run of bytes overwritten mid-scan; PIL still decodes it

    def __post_init__(self) -> None:
        total = 0.0
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"FaultRates.{f.name} must be a number, got {value!r}")
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultRates.{f.name} must be in [0, 1], got {value!r}")
            total += float(value)
        if total > 1.0 + 1e-9:
            raise ValueError(f"FaultRates must sum to at most 1, got {total!r} ({self.as_dict()})")

    @classmethod
    def none(cls) -> FaultRates:
        """A pool with no injected faults."""
        return cls(**{name: 0.0 for name in FAULTS})

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def total(self) -> float:
        return sum(self.as_dict().values())

    def pick(self, u: float) -> str:
        """Map a uniform draw in [0, 1) to a fault name (or ``"none"``) by cumulative rate."""
        acc = 0.0
        for name in FAULTS:
            acc += getattr(self, name)
            if u < acc:
                return name
        return "none"


assert tuple(f.name for f in fields(FaultRates)) == FAULTS
