"""CLIP-score filters (DataComp baselines): by threshold, or by fraction of the whole pool.

The score is a column written earlier (``clip_embed`` writes ``clip_score``; DataComp metadata
carries ``clip_b32_similarity_score`` / ``clip_l14_similarity_score``). By fraction, the
threshold is global, as in DataComp's ``get_threshold``: with ``N`` rows in the pool, the score
at index ``int(N * fraction)`` of all scores sorted descending; rows with ``score >= threshold``
are kept. Rows without a score (failed ones) count in ``N``, like DataComp's metadata rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from curate.registry import register_step
from curate.stepkit import STEP_DROP_REASON, STEP_KEEP, append_columns, quote_identifier

logger = logging.getLogger(__name__)


class ClipThresholdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_column: str = Field(default="clip_score", description="column holding the CLIP score")
    threshold: float = Field(description="keep rows with score >= threshold (e.g. B/32 0.28 as LAION)")


class ClipFractionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_column: str = Field(default="clip_score", description="column holding the CLIP score")
    fraction: float = Field(gt=0, le=1, description="keep the top fraction of the whole pool")


def _scores(batch: pa.Table, column: str) -> pa.ChunkedArray:
    if column not in batch.column_names:
        raise ValueError(f"score_column: value {column!r} is not a column; columns: {batch.column_names}")
    return pc.cast(batch[column], pa.float64())


def threshold_decision(batch: pa.Table, column: str, threshold: float, reason: str) -> pa.Table:
    """Keep ``score >= threshold``. A row without a score is dropped as ``missing_score`` if it is still
    kept, and gets no decision if an earlier step dropped it (a model step with ``rows: kept`` never
    scored it, so no claim about its score is true)."""
    scores = _scores(batch, column)
    missing = pc.is_null(scores)
    keep = pc.fill_null(pc.greater_equal(scores, threshold), False)
    reasons = pc.if_else(missing, pa.scalar("missing_score"), pa.scalar(reason))
    reasons = pc.if_else(keep, pa.scalar(None, pa.string()), reasons)
    undecided = pc.and_(missing, pc.invert(pc.fill_null(batch["keep"], False)))
    keep = pc.if_else(undecided, pa.scalar(None, pa.bool_()), keep)
    reasons = pc.if_else(undecided, pa.scalar(None, pa.string()), reasons)
    return append_columns(batch, {STEP_KEEP: keep, STEP_DROP_REASON: reasons})


@register_step("clip_score", params=ClipThresholdParams)
class ClipScoreThreshold:
    """Keep samples whose CLIP score is at least a fixed threshold."""

    def __init__(self, params: ClipThresholdParams):
        self.params = params

    def __call__(self, batch: pa.Table) -> pa.Table:
        return threshold_decision(batch, self.params.score_column, self.params.threshold, "clip_score_below_threshold")


@register_step("clip_fraction", params=ClipFractionParams, global_decision=True)
class ClipScoreFraction:
    """Keep the top fraction of the whole pool by CLIP score (a global quantile, then a threshold)."""

    def __init__(self, params: ClipFractionParams):
        self.params = params

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch  # decides in decide(), once the pool-wide threshold is known

    @staticmethod
    def state_columns(params: ClipFractionParams) -> tuple[str, ...]:
        return (params.score_column,)  # and count(*): a stage without steps stores little else

    @staticmethod
    def decide_columns(params: ClipFractionParams) -> tuple[str, ...]:
        return (params.score_column,)

    def global_state(self, con: duckdb.DuckDBPyConnection, artifacts: Path) -> dict:
        column = quote_identifier(self.params.score_column)
        try:
            # fetchall: DuckDB 2 keeps a connection busy until a result is fully fetched.
            ((pool,),) = con.execute("SELECT count(*) FROM staged").fetchall()
            index = int(pool * self.params.fraction)
            rows = con.execute(
                f"SELECT {column} FROM staged WHERE {column} IS NOT NULL ORDER BY {column} DESC LIMIT 1 OFFSET {index}"
            ).fetchall()
        except duckdb.BinderException as exc:
            raise ValueError(f"score_column: value {self.params.score_column!r} is not a column: {exc}") from None
        # Fewer scored rows than the rank: every scored row is within the top fraction.
        threshold = float(rows[0][0]) if rows else float("-inf")
        return {"pool_size": pool, "rank": index, "threshold": threshold}

    def decide(self, batch: pa.Table, state: dict) -> pa.Table:
        return threshold_decision(batch, self.params.score_column, state["threshold"], "clip_score_below_fraction")
