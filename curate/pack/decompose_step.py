"""The decompose step: plan each sample's power-of-two chunks (dataset decomposition).

It only annotates: ``chunks`` (list of {index, offset, k, length}) and ``dropped_tokens``; the bucket
writer cuts the tokens when it writes. A sample too short for the smallest bucket is dropped
with reason ``too_short_for_buckets``.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.pack.decompose import DecomposeConfig, decompose_length, dropped_tokens
from curate.registry import register_step

# length: tokens stored for the chunk, 2**k plus one target token when shift_target.
CHUNK_TYPE = pa.struct([("index", pa.int32()), ("offset", pa.int32()), ("k", pa.int8()), ("length", pa.int32())])


class DecomposeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_k: int = Field(default=3, ge=0, le=20, description="smallest bucket: 2**min_k positions")
    max_k: int = Field(default=8, ge=0, le=20, description="largest bucket; longer documents are cut")
    shift_target: bool = Field(default=True, description="each chunk carries one extra token for its target")

    @model_validator(mode="after")
    def _ordered(self) -> DecomposeParams:
        if self.min_k > self.max_k:
            raise ValueError(f"min_k={self.min_k} must not exceed max_k={self.max_k}")
        return self

    def config(self) -> DecomposeConfig:
        return DecomposeConfig(min_k=self.min_k, max_k=self.max_k, shift_target=self.shift_target)


@register_step("decompose", params=DecomposeParams, rows="kept")
class Decomposer:
    """Split token sequences into power-of-two chunks following their length's binary representation."""

    def __init__(self, params: DecomposeParams):
        self.config = params.config()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "num_tokens" not in batch.column_names:
            raise ValueError("decompose needs the num_tokens column: put a tokenize step before it")
        plans, dropped, keep, reasons = [], [], [], []
        for n in batch["num_tokens"].to_pylist():
            chunks = decompose_length(n or 0, self.config)
            extra = 1 if self.config.shift_target else 0
            plans.append([{"index": c.index, "offset": c.offset, "k": c.k, "length": 2**c.k + extra} for c in chunks])
            dropped.append(dropped_tokens(n or 0, self.config))
            keep.append(bool(chunks))
            reasons.append(None if chunks else "too_short_for_buckets")
        batch = batch.append_column("chunks", pa.array(plans, pa.list_(CHUNK_TYPE)))
        batch = batch.append_column("dropped_tokens", pa.array(dropped, pa.int32()))
        batch = batch.append_column("step_keep", pa.array(keep, pa.bool_()))
        return batch.append_column("step_drop_reason", pa.array(reasons, pa.string()))
