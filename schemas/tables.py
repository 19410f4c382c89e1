"""Arrow schemas of the sample table that flows from readers through steps to the writer.

Every reader yields tables with exactly ``SAMPLE_SCHEMA``'s columns (steps add their own
columns after these). One row is one candidate sample, failures included: a row whose image
could not be fetched, read or decoded keeps ``status != "success"`` and an ``error_message``.
"""

from __future__ import annotations

import pyarrow as pa

# img2dataset's status values, plus the ones curate adds for its own stages.
STATUS_SUCCESS = "success"
STATUS_FAILED_DOWNLOAD = "failed_to_download"
STATUS_FAILED_RESIZE = "failed_to_resize"
STATUS_FAILED_READ = "failed_to_read"  # listed by the pool but missing or unreadable in the tar
STATUS_FAILED_DECODE = "failed_to_decode"  # bytes present but not a decodable image
STATUS_DUPLICATE_KEY = "failed_duplicate_key"  # a tar key seen before, apart from its first sample
STATUS_FAILED_CAPTION = "failed_to_caption"  # the model's answer is empty, malformed, cut off or a refusal
STATUS_CAPTION_UNAVAILABLE = "failed_caption_unavailable"  # the model could not answer (server, OOM): transient
# Failures of the moment, not of the sample: a re-run of the same command computes these rows again
# (and only these), after the stage that failed them; every other failure is final.
RETRYABLE_STATUSES = (STATUS_CAPTION_UNAVAILABLE,)

READ_STEP = "read"  # the pseudo-step that decisions name for failures while reading the pool

DECISION_TYPE = pa.struct([("step", pa.string()), ("keep", pa.bool_()), ("drop_reason", pa.string())])

SAMPLE_FIELDS: list[pa.Field] = [
    pa.field("uid", pa.string(), nullable=False),  # 32 lowercase hex chars (DataComp)
    pa.field("key", pa.string()),  # the key in the source pool; never joined on
    pa.field("source", pa.string()),  # the input shard this row came from
    pa.field("shard_index", pa.int32(), nullable=False),  # unit of work: index of the input shard
    pa.field("row_in_shard", pa.int32(), nullable=False),  # position in the input shard
    pa.field("shard_rows", pa.int32(), nullable=False),  # rows the input shard produced in all
    pa.field("caption", pa.string()),
    pa.field("url", pa.string()),
    pa.field("image", pa.binary()),  # encoded bytes as stored in the pool; decoded only by steps
    pa.field("image_ext", pa.string()),  # jpg | png | webp ...
    # Where the image bytes are in ``source`` (a plain tar): later stages fetch them by range.
    pa.field("image_offset", pa.int64()),
    pa.field("image_size", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("sha256", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_message", pa.string()),
    pa.field("meta", pa.string()),  # JSON object: every other field the pool had for this sample
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("drop_reason", pa.string()),
    pa.field("decisions", pa.list_(DECISION_TYPE)),
]
SAMPLE_SCHEMA = pa.schema(SAMPLE_FIELDS)
SAMPLE_COLUMNS = [f.name for f in SAMPLE_FIELDS]

# Columns that never go into the Parquet sidecar (bytes live in the tar) or the sample json.
HEAVY_COLUMNS = ("image",)
# Bookkeeping that only the runner needs.
RUNNER_COLUMNS = ("shard_rows",)
# In the sidecar (where a sample's bytes are in its source) but not in the sample's json.
LOCATION_COLUMNS = ("image_offset", "image_size")
# String columns holding JSON documents (a GBC graph: ``gbc_graph``): text in the sidecar, where DuckDB's
# json functions read them, and an object in the sample's json, not a string inside it.
JSON_TEXT_SUFFIXES = ("_graph",)


def empty_sample_table() -> pa.Table:
    return SAMPLE_SCHEMA.empty_table()


def rows_to_sample_table(rows: list[dict]) -> pa.Table:
    """Build a sample table from row dicts; missing optional columns become null.

    Defaults applied here so that every reader agrees: a row is kept until a step drops it,
    unless it already failed, in which case its status is its drop reason.
    """
    filled = []
    for row in rows:
        full = {name: row.get(name) for name in SAMPLE_COLUMNS}
        if full["status"] is None:
            full["status"] = STATUS_SUCCESS
        if full["keep"] is None:
            full["keep"] = full["status"] == STATUS_SUCCESS
            if not full["keep"] and full["drop_reason"] is None:
                full["drop_reason"] = f"{READ_STEP}:{full['status']}"
        if full["decisions"] is None:
            # A row that failed before any step still has its decision, so that the decisions
            # table accounts for every row.
            failed = full["status"] != STATUS_SUCCESS
            full["decisions"] = [{"step": READ_STEP, "keep": False, "drop_reason": full["status"]}] if failed else []
        filled.append(full)
    return pa.Table.from_pylist(filled, schema=SAMPLE_SCHEMA)
