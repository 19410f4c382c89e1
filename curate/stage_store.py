"""Stage outputs: per input shard, a Parquet of the columns a stage added, and a done-marker.

    RUN/_cache/stage1-<fingerprint>/00000003.parquet    shard_index, row_in_shard + the columns it wrote
    RUN/_cache/stage1-<fingerprint>/_done/00000003.json {"rows", "columns", "version", "inputs", "retry"
                                                         [, "in_source", "order"]}, written last
    RUN/_cache/stage1-<fingerprint>/_parts/00000003-<attempt>/*.arrow  rows of an attempt in flight
    RUN/_cache/barrier1-<step>-<fingerprint>/state.json  a barrier's global state (+ artifacts/)

A marker names the ``version`` of what it vouches for (new at every write) and the ``inputs`` it was
computed from: the versions of the shard's earlier stage outputs and of the barrier states before
it. A marker whose inputs are not the current ones is stale (an earlier stage re-computed rows of
the shard), and the shard is computed again. ``retry`` lists the rows this stage failed with a
retryable status (a model server that could not answer): a re-run computes only those rows again
and keeps the others. Parts of an attempt that a kill interrupted stay in ``_parts``, keyed by what
the attempt computes, and a resumed run computes only the rows they do not hold.

Stage 0 stores every column the reader produced and its steps added, except the image bytes
(those stay in the source and are fetched again by byte range when needed) and the source's
arrays that its reader reads again alone for less than storing costs (DataComp's embeddings:
``array_columns``), unless a step names one in a ``*_column`` param (a step reads a source array
only by naming it; a barrier's SQL reads it from the stored files). Those the marker lists as
``in_source``, with the stage's column ``order`` (the arrays last), and loading the shard reads
them again from the source when asked (the sink copying them). From a source whose reader reads
columns alone (DataComp's), stage 0 stores only the keys, the bookkeeping, what its steps add or
change and what steps name or barriers read (``Plan.first_stage_stores``, when every barrier says
what it reads): every other column is ``in_source``, and loading the shard reads them again; a
stage 0 without steps (a recipe that starts with a global step) reads only what it stores. A later stage stores
the bookkeeping columns (status, keep, decisions, ...), the columns its steps declare they modify
and the columns they add. A shard's table as of the end of stage k is stage 0's file with the
columns of stages 1..k laid over it, row by row (rows never change: one per input sample).

Folders are named by the fingerprint of the recipe up to and including the stage, so a re-run
whose earlier steps did not change finds them and skips that work; nothing is ever overwritten
in place (every file is committed whole: ``RunStorage.writer``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.readers.base import ShardRef, read_source_columns, source_array_columns
from curate.run_storage import RunStorage
from schemas.tables import HEAVY_COLUMNS

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("shard_index", "row_in_shard")
# Columns that any stage may change (a step fails rows, decisions are folded in).
BOOKKEEPING_COLUMNS = ("status", "error_message", "keep", "drop_reason", "decisions")


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or pa.types.is_large_list(type_)


def _is_numeric(type_: pa.DataType) -> bool:
    while _is_list(type_):
        type_ = type_.value_type
    return pa.types.is_floating(type_) or pa.types.is_integer(type_)


# A column is dictionary-encoded when its first rows repeat: at most one distinct value in two.
_DICTIONARY_PROBE_ROWS = 1024


def _repeats(column: pa.ChunkedArray) -> bool:
    """Whether a dictionary pays for the column: a text one only if its first rows repeat; any other
    (booleans, lists of decisions, whose leaves repeat) keeps one, as Parquet's default would."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return True
    probe = column.slice(0, _DICTIONARY_PROBE_ROWS)
    return pc.count_distinct(probe, mode="all").as_py() * 2 <= max(len(probe), 1)


def write_sample_parquet(table: pa.Table, where) -> None:
    """Write a table of samples as Parquet, dictionary-encoding only the columns that repeat and
    keeping min/max statistics only for the columns a query filters on.

    Parquet's default tries a dictionary for every column; on embeddings and scores (no two alike)
    that is wasted work, about 70% of writing a DataComp shard with its two embeddings, and the
    column falls back to plain encoding anyway. A text column whose values are all different
    (uids, urls, captions) fits the dictionary page and is kept that way, at a third of the write
    of a shard of metadata; only those whose first rows repeat (status, reasons, shard names) get
    one. Statistics of list columns (embeddings, decisions) are a min and max over every element,
    which no query prunes row groups by; computing them was another third of the write.
    """
    dictionary = [f.name for f in table.schema if not _is_numeric(f.type) and _repeats(table[f.name])]
    statistics = [f.name for f in table.schema if not _is_list(f.type)]
    pq.write_table(table, where, use_dictionary=dictionary, write_statistics=statistics)


class StageStore:
    """The cache folder ``name`` of one stage (or of one barrier's state) in the run's cache; on any
    storage a run folder may live on, and picklable, so that Ray tasks on any node write to it."""

    def __init__(self, cache: RunStorage, name: str):
        self.name = name
        self.storage = cache.child(name)

    def __eq__(self, other) -> bool:
        return isinstance(other, StageStore) and self.storage == other.storage

    def __hash__(self) -> int:
        return hash(self.storage)

    def prepare(self, description: dict) -> None:
        self.storage.makedirs("_done")
        if not self.storage.exists("stage.json"):
            self.storage.write_json("stage.json", description)
        self.storage.remove_temporaries()

    @staticmethod
    def data_name(shard_index: int) -> str:
        return f"{shard_index:08d}.parquet"

    @staticmethod
    def marker_name(shard_index: int) -> str:
        return f"_done/{shard_index:08d}.json"

    def is_done(self, shard_index: int) -> bool:
        return self.storage.exists(self.marker_name(shard_index))

    def read_marker(self, shard_index: int) -> dict | None:
        try:
            return self.storage.read_json(self.marker_name(shard_index))
        except FileNotFoundError:
            return None

    @property
    def parts(self) -> RunStorage:
        """Where the parts of attempts in flight are (``curate.parts``)."""
        return self.storage.child("_parts")

    def parts_in_flight(self) -> int:
        return sum(len(self.parts.list(folder, "*.arrow")) for folder in self.parts.list())

    def clear_parts(self) -> None:
        """Once every shard of the stage is committed, parts left are garbage: those of an attempt
        killed after its commit but before it removed them, or ones orphaned workers wrote late."""
        self.storage.remove("_parts")

    def columns(self, *, stored_only: bool = False) -> list[str]:
        """Every column of this stage's output (``stored_only``: in its files, not ``in_source``),
        in first-seen order over its shards."""
        seen: dict[str, None] = {}
        for name in self.storage.list("_done", "*.json"):
            marker = self.storage.read_json(f"_done/{name}")
            names = marker["columns"] if stored_only else marker.get("order", marker["columns"])
            for column in names:
                seen.setdefault(column, None)
        return list(seen)

    def write(
        self,
        shard_index: int,
        table: pa.Table,
        inputs: list[str],
        retry: list[int],
        in_source: list[str] = (),
        order: list[str] | None = None,
    ) -> str:
        """The stage's columns of one shard but those ``in_source`` (read again from the source when
        the shard is loaded; ``order`` places them among the others), then its marker (the marker
        vouches for the data); returns the new version."""
        stored = table.drop_columns([c for c in in_source if c in table.column_names])
        with self.storage.writer(self.data_name(shard_index)) as f:
            write_sample_parquet(stored, f)
        version = uuid.uuid4().hex
        marker = {
            "rows": table.num_rows,
            "columns": stored.column_names,
            "version": version,
            "inputs": inputs,
            "retry": retry,
        }
        if in_source:
            marker.update(in_source=list(in_source), order=list(order or table.column_names))
        self.storage.write_bytes(self.marker_name(shard_index), json.dumps(marker).encode())
        return version

    def read(self, shard_index: int, columns: list[str] | None = None) -> pa.Table:
        return with_arrow_list_names(self.storage.read_parquet(self.data_name(shard_index), columns))


def _arrow_names(type_: pa.DataType) -> pa.DataType:
    def child(field: pa.Field) -> pa.Field:
        return pa.field("item", _arrow_names(field.type), field.nullable, field.metadata)

    if pa.types.is_list(type_):
        return pa.list_(child(type_.value_field))
    if pa.types.is_large_list(type_):
        return pa.large_list(child(type_.value_field))
    if pa.types.is_fixed_size_list(type_):
        return pa.list_(child(type_.value_field), type_.list_size)
    if pa.types.is_struct(type_):
        return pa.struct([field.with_type(_arrow_names(field.type)) for field in type_])
    return type_


def with_arrow_list_names(table: pa.Table) -> pa.Table:
    """``table`` with its lists' values named ``item``, as Arrow names them, not ``element``, as a
    Parquet file gives them back: a shard written from the cache (a resumed run) then has the schema,
    and the bytes, of one written from the stage's own table."""
    schema = pa.schema([field.with_type(_arrow_names(field.type)) for field in table.schema], table.schema.metadata)
    return table if str(schema) == str(table.schema) else table.cast(schema)


def stage_columns(output: pa.Table, input_columns: list[str], declared: set[str], first: bool) -> list[str]:
    """The columns a stage stores for a shard: all but image bytes for the first stage; else the
    keys, the bookkeeping columns, what its steps declared they modify, and what they added."""
    names = [c for c in output.column_names if c not in HEAVY_COLUMNS]
    if first:
        return names
    known = set(input_columns)
    keep = set(KEY_COLUMNS) | set(BOOKKEEPING_COLUMNS) | declared
    return [c for c in names if c in keep or c not in known]


def overlay(base: pa.Table, layer: pa.Table) -> pa.Table:
    """``base`` with ``layer``'s columns replacing or extending it; both have the same rows in order."""
    if layer.num_rows != base.num_rows or not layer["row_in_shard"].equals(base["row_in_shard"]):
        raise RuntimeError(
            f"stage outputs of shard {base['shard_index'][0] if base.num_rows else '?'} do not line up "
            f"({base.num_rows} rows vs {layer.num_rows}): the cache is inconsistent; remove RUN/_cache"
        )
    for name in layer.column_names:
        if name in KEY_COLUMNS:
            continue
        if name in base.column_names:
            base = base.set_column(base.schema.get_field_index(name), name, layer[name])
        else:
            base = base.append_column(layer.schema.field(name), layer[name])
    return base


def load_shard(stores: list[StageStore], ref: ShardRef, skip: Collection[str] = ()) -> pa.Table:
    """A shard's table as of the end of the last of ``stores`` (stage 0 first), with the columns
    stage 0 left in the source read again from it, but those in ``skip``."""
    table = stores[0].read(ref.index)
    marker = stores[0].read_marker(ref.index) or {}
    left = [c for c in marker.get("in_source") or [] if c not in skip]
    if left:
        again = read_source_columns(ref, left)
        if again.num_rows != table.num_rows:
            raise RuntimeError(
                f"{ref.path!r} has {again.num_rows} rows of {left} but its stage 0 output "
                f"{table.num_rows}: the source changed under the run; remove RUN/_cache"
            )
        for name in again.column_names:
            table = table.append_column(again.schema.field(name), again[name])
        table = table.select([c for c in marker["order"] if c in table.column_names])
    for store in stores[1:]:
        table = overlay(table, store.read(ref.index))
    return table


def stored_in_source(
    columns: list[str], ref: ShardRef, named: set[str], stored: set[str] | None = None
) -> tuple[list[str], list[str] | None]:
    """The columns of stage 0's output (``columns``) that stay in the source, and the output's
    column order with all of them, which is the same whether stage 0 read them or not: the arrays
    last, in the reader's order. Those that stay are the reader's arrays (``source_array_columns``)
    but those a step names (``named``: stage 0 read them, and a barrier's SQL may read them); or,
    given the ``stored`` ones (``Plan.first_stage_stores``), all the others. ([], None) when
    nothing stays."""
    arrays = source_array_columns(ref)
    order = [c for c in columns if c not in arrays] + arrays
    if stored is not None:
        return [c for c in order if c not in stored], order
    if not arrays:
        return [], None
    missing = sorted(c for c in arrays if c in named and c not in columns)
    if missing:
        raise RuntimeError(f"stage 0 of {ref.path!r} did not read {missing}, which a step names")
    return [c for c in arrays if c not in named], order


def _sql_literal(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def staged_view_sql(stores: list[StageStore]) -> str:
    """SQL of the view ``staged`` over ``stores``: one row per sample, each column from the latest
    stage that stored it (DuckDB reads only the columns a query names)."""
    from curate.stepkit import quote_identifier

    latest: dict[str, int] = {}
    for j, store in enumerate(stores):
        for name in store.columns(stored_only=True):
            if name not in KEY_COLUMNS:
                latest[name] = j
    select = ", ".join(
        [*(quote_identifier(k) for k in KEY_COLUMNS), *(f"s{j}.{quote_identifier(c)}" for c, j in latest.items())]
    )
    sources = [
        f"read_parquet({_sql_literal(store.storage.url('*.parquet'))}, union_by_name = true) AS s{j}"
        for j, store in enumerate(stores)
    ]
    joins = sources[0] + "".join(f" JOIN {src} USING (shard_index, row_in_shard)" for src in sources[1:])
    return f"SELECT {select} FROM {joins}"
