"""Select the samples of a DataComp subset file (``.npy`` of sorted ``u8,u8`` uids).

This is how a published subset (DataComp-1B, a baseline's output, another team's filter) is
applied to a pool: a sample is kept when its uid is in the file. DataComp's resharder writes a
uid once per occurrence in the subset, so the count is written as ``repeat`` too, which the
writer honours. The file is memory-mapped and looked up by binary search over its sorted entries
(``curate.subset.SubsetIndex``), never turned into a Python set of billions of strings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.registry import register_step
from curate.subset import SubsetIndex, is_sorted, read_subset, sort_entries, uids_to_pairs

logger = logging.getLogger(__name__)


class SubsetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="DataComp subset file: .npy of dtype u8,u8 (uid high, low 64 bits)")

    @model_validator(mode="after")
    def _exists(self) -> SubsetParams:
        if not Path(self.path).is_file():
            raise ValueError(f"path: subset file {self.path!r} does not exist")
        return self


@register_step("subset", params=SubsetParams)
class SubsetFilter:
    """Keep samples whose uid is in a DataComp subset file; repeat them as often as it lists them."""

    def __init__(self, params: SubsetParams):
        self.params = params
        subset = read_subset(params.path, mmap=True)
        if not is_sorted(subset):
            # DataComp's tools always sort; a hand-made file may not be. Sorting needs it in memory.
            logger.warning("subset file %s is not sorted; sorting a copy in memory", params.path)
            subset = sort_entries(np.asarray(subset))
        if len(subset) == 0:
            logger.warning("subset file %s is empty: every sample will be dropped", params.path)
        self.index = SubsetIndex(subset)
        logger.info("subset: %d entries from %s", len(subset), params.path)

    def __call__(self, batch: pa.Table) -> pa.Table:
        counts = self.index.counts(uids_to_pairs(batch["uid"]))
        count_array = pa.array(counts.astype(np.int32), pa.int32())
        keep = pc.greater(count_array, 0)
        reasons = pc.if_else(keep, pa.scalar(None, pa.string()), pa.scalar("not_in_subset"))
        return (
            batch.append_column("subset_count", count_array)
            .append_column("repeat", count_array)
            .append_column("step_keep", keep)
            .append_column("step_drop_reason", reasons)
        )
