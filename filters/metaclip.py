"""MetaCLIP balancing (Xu et al., "Demystifying CLIP Data", 2023; facebookresearch/MetaCLIP).

MetaCLIP curates a pool against a list of metadata entries (WordNet synsets, Wikipedia words,
bigrams and titles: 500k concepts). A caption matches an entry when the entry occurs in it as a
whole word or phrase (``filters.text_match``: one Aho-Corasick pass per caption, not a loop over
entries). Over the whole pool, each entry's count is the number of captions matching it. Head
entries (count above ``t``; 20k for a 400M pool) are sub-sampled: each pair matching entry ``e``
is drawn with probability ``p_e = min(1, t / count_e)``, independently per entry, and a pair is
kept when ANY of its entries draws it. Tail entries (count <= t) keep all of their pairs, so the
result is flatter over concepts. Pairs matching no entry are dropped (``drop_unmatched``).

As a global step: ``__call__`` writes ``{prefix}_entries`` (the sorted indices of the matched
entries, list<int32>) in the streaming pass (``annotates_in_stream``), so matching runs in
parallel workers; ``global_state`` counts entries over the rows still kept, with one DuckDB
GROUP BY, and saves ``artifacts/<step id>/entry_counts.parquet``; ``decide`` draws. Used outside
a run on a stage without the column, ``global_state`` matches the text read from the stage (in
bounded batches) and ``decide`` annotates before drawing. Draws are
``seeded_uniform(uid, seed, salt=entry)``: fixed per (uid, seed, entry), so decisions do not
depend on batch boundaries, workers or resumes. ``{prefix}_keep_prob`` is each row's chance to
survive, ``1 - prod_e (1 - p_e)``, for re-selecting in DuckDB without recomputing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curate.identity import seeded_uniform
from curate.registry import register_step
from curate.stepkit import quote_identifier, read_artifact_table, resolve_data_path
from filters.text_match import PhraseMatcher, read_entries

logger = logging.getLogger(__name__)

ELIGIBLE = "status = 'success' AND keep"
# Offsets the per-entry salts so that entry e's draws differ from other steps' draws with salt e
# (MoDE salts by expert index) under the same seed.
_SALT_BASE = 0x4D43_0000_0000  # "MC"
_READ_ROWS = 65_536  # texts read from the stage at once when counting by matching
_ALLOWED = "a text file with one entry per line ('#' comments, blank lines ignored) or a .json list of strings"


class MetaClipParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: str = Field(description="metadata entries: " + _ALLOWED + " (MetaCLIP's metadata.json)")
    t: int = Field(default=20_000, ge=1, description="entries matched more often are sub-sampled to about t")
    seed: int = 0
    text: str = Field(default="caption", description="column whose text is matched")
    case_insensitive: bool = True
    drop_unmatched: bool = Field(default=True, description="drop pairs matching no entry (MetaCLIP does)")
    prefix: str = Field(default="metaclip", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("entries")
    @classmethod
    def _readable_entries(cls, value: str) -> str:
        path = resolve_data_path(value)
        # Local files are checked with the recipe, before any work; remote ones when the step is built.
        if "://" not in path:
            try:
                read_entries(path)
            except ValueError as exc:
                raise ValueError(f"{exc}; allowed: {_ALLOWED}") from None
        return path


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """``p_e = min(1, t / count_e)``; 1 for entries never counted."""
    return np.minimum(1.0, t / np.maximum(np.asarray(counts, np.float64), 1.0))


@register_step("metaclip", params=MetaClipParams, global_decision=True)
class MetaClipBalancer:
    """MetaCLIP balancing: sub-sample pairs of head metadata entries to about t per entry."""

    # The runner also runs __call__ in the streaming pass: entry matching happens in parallel
    # workers, and the global phase counts the matches with one SQL query.
    annotates_in_stream = True

    def __init__(self, params: MetaClipParams):
        self.params = params
        self.entries = read_entries(params.entries)
        self.matcher = PhraseMatcher(
            self.entries, case_insensitive=params.case_insensitive, source=f"entries file {params.entries!r}"
        )
        self._probs: tuple[str, int, np.ndarray] | None = None
        logger.info("metaclip: %d entries from %s", len(self.entries), params.entries)

    @property
    def entries_column(self) -> str:
        return f"{self.params.prefix}_entries"

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.params.text not in batch.column_names:
            raise ValueError(f"text: value {self.params.text!r} is not a column; columns: {batch.column_names}")
        hits = self.matcher.matches_batch(batch[self.params.text].to_pylist())
        offsets = np.zeros(len(hits) + 1, np.int32)
        np.cumsum([len(h) for h in hits], out=offsets[1:])
        values = np.fromiter((i for h in hits for i in h), np.int32, count=int(offsets[-1]))
        return batch.append_column(self.entries_column, pa.ListArray.from_arrays(offsets, values))

    @staticmethod
    def state_columns(params: MetaClipParams) -> tuple[str, ...]:
        # It counts the entry ids its ``__call__`` added in the stage before (a column stage 0
        # stores), not the text: the captions stay in the source.
        return ()

    def global_state(self, con: duckdb.DuckDBPyConnection, artifacts: Path) -> dict:
        p = self.params
        # fetchall / full reads: DuckDB keeps a connection busy until a result is fully fetched.
        staged_columns = {row[0] for row in con.execute("DESCRIBE staged").fetchall()}
        if self.entries_column in staged_columns:
            counts, matched, unmatched = self._count_annotated(con)
        elif p.text in staged_columns:
            counts, matched, unmatched = self._count_by_matching(con)
        else:
            raise ValueError(f"text: value {p.text!r} is not a column of the pool; columns: {sorted(staged_columns)}")
        artifacts.mkdir(parents=True, exist_ok=True)
        path = artifacts / "entry_counts.parquet"
        table = pa.table(
            {
                "entry_id": pa.array(np.arange(len(counts), dtype=np.int32)),
                "entry": pa.array(self.entries, pa.string()),
                "count": pa.array(counts),
            }
        )
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        head = counts > p.t
        top = np.argsort(-counts, kind="stable")[:5]
        logger.info(
            "metaclip: %d of %d entries over t=%d; largest: %s",
            int(head.sum()),
            len(counts),
            p.t,
            ", ".join(f"{self.entries[i]!r}={counts[i]}" for i in top),
        )
        return {
            "entry_counts": str(path),
            "t": p.t,
            "entries": len(counts),
            "head_entries": int(head.sum()),
            "matched_rows": int(matched),
            "unmatched_rows": int(unmatched),
        }

    def _count_annotated(self, con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, int, int]:
        """Per-entry counts with SQL over ``{prefix}_entries`` (written by ``__call__`` upstream)."""
        column = quote_identifier(self.entries_column)
        found = con.execute(
            f"SELECT e, count(*) FROM (SELECT unnest({column}) AS e FROM staged WHERE {ELIGIBLE}) GROUP BY e"
        ).fetchall()
        ((matched, unmatched),) = con.execute(
            f"SELECT count(*) FILTER (WHERE coalesce(len({column}), 0) > 0), "
            f"count(*) FILTER (WHERE coalesce(len({column}), 0) = 0) FROM staged WHERE {ELIGIBLE}"
        ).fetchall()
        counts = np.zeros(len(self.entries), np.int64)
        for entry_id, count in found:
            if not 0 <= entry_id < len(counts):
                raise ValueError(f"metaclip: entry id {entry_id} in the pool, but the entries file has {len(counts)}")
            counts[entry_id] = count
        return counts, int(matched), int(unmatched)

    def _count_by_matching(self, con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, int, int]:
        """Per-entry counts by matching the text column, read from the stage in bounded batches."""
        column = quote_identifier(self.params.text)
        reader = con.sql(f"SELECT {column} FROM staged WHERE {ELIGIBLE}").to_arrow_reader(_READ_ROWS)
        counts = np.zeros(len(self.entries), np.int64)
        matched = unmatched = 0
        for record_batch in reader:
            for hit in self.matcher.matches_batch(record_batch.column(0).to_pylist()):
                if hit:
                    counts[hit] += 1
                    matched += 1
                else:
                    unmatched += 1
        return counts, matched, unmatched

    def _entry_probs(self, state: dict) -> np.ndarray:
        key = (state["entry_counts"], int(state["t"]))
        if self._probs is None or self._probs[:2] != key:
            counts = read_artifact_table(key[0], columns=["count"])["count"].to_numpy()
            self._probs = (*key, entry_probabilities(counts, key[1]))
        return self._probs[2]

    def decide(self, batch: pa.Table, state: dict) -> pa.Table:
        p = self.params
        if self.entries_column not in batch.column_names:
            batch = self(batch)  # not annotated upstream: match here
        n = batch.num_rows
        probs = self._entry_probs(state)
        entries = pa.concat_arrays(batch[self.entries_column].chunks) if n else pa.array([], pa.list_(pa.int32()))
        lengths = pc.fill_null(pc.list_value_length(entries), 0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(entries).to_numpy().astype(np.int64)
        if flat.size and flat.max() >= len(probs):
            raise ValueError(f"metaclip: entry id {flat.max()} in the batch, but the state counts {len(probs)}")
        # Rows dropped earlier get no decision (and were not counted).
        eligible = pc.fill_null(batch["keep"], False).to_numpy(zero_copy_only=False).astype(bool)
        rows = np.repeat(np.arange(n), lengths)
        take = eligible[rows]
        rows, flat = rows[take], flat[take]
        uids = batch["uid"].to_numpy(zero_copy_only=False)[rows]
        draws = seeded_uniform(uids, p.seed, salt=flat + _SALT_BASE)
        p_e = probs[flat]
        kept_any = np.bincount(rows, weights=draws < p_e, minlength=n) > 0
        matched = np.bincount(rows, minlength=n) > 0
        with np.errstate(divide="ignore"):
            log_miss = np.bincount(rows, weights=np.log1p(-p_e), minlength=n)
        keep_prob = -np.expm1(log_miss)

        step_keep = np.where(matched, kept_any, not p.drop_unmatched)
        decided = eligible
        reasons = np.where(matched, "balanced_out", "no_entry_match")
        columns = {
            f"{p.prefix}_keep_prob": pa.array(keep_prob.astype(np.float32), mask=~matched),
            "step_keep": pa.array(step_keep, pa.bool_(), mask=~decided),
            "step_drop_reason": pa.array(reasons, pa.string(), mask=~decided | step_keep),
        }
        for name, values in columns.items():
            batch = batch.append_column(name, values)
        return batch
