"""The ``samples`` and ``metadata`` output layouts, and their split sets (``output.split``).

``samples``: ``shards/NNNNNNNN.tar`` of the kept samples (image, txt, json) beside the sidecar.
``metadata``: the sidecar alone (metadata-only pools such as DataComp's; reshard the subset later).
With ``output.split`` each also writes one shard set per value of the split column.
"""

from __future__ import annotations

import pyarrow as pa

from curate.registry import register_layout
from curate.run_storage import StagedFiles
from curate.rundir import RunDir
from curate.sink import sidecar
from curate.sink.splits import finish_splits, split_finals, split_members
from curate.sink.tars import write_tar
from curate.stage_store import write_sample_parquet
from schemas.recipe import Recipe


def _write_splits(ctx, name: str, kept: pa.Table, files: StagedFiles) -> dict:
    output = ctx.output
    if output.split is None:
        return {}
    members = split_members(kept, output.split.column)
    for (value, ext), rel in split_finals(output, name, list(members)).items():
        rows = kept.take(members[value])
        if ext == ".tar":
            write_tar(files.path(rel), rows, output.caption_field)
        else:
            write_sample_parquet(sidecar(rows), files.path(rel))
    return {"splits": {value: len(rows) for value, rows in members.items()}}


@register_layout("samples", writes_images=True)
class SamplesLayout:
    """One WebDataset shard of the kept samples per input shard, with sizes.json."""

    def write_shard(self, ctx, name: str, kept: pa.Table, files: StagedFiles) -> dict:
        written = write_tar(files.path(f"shards/{name}.tar"), kept, ctx.output.caption_field)
        return {"samples_written": written, **_write_splits(ctx, name, kept, files)}

    def finish(self, run: RunDir, recipe: Recipe, markers: list[dict], tasks) -> dict:
        sizes = {m["shard"]: m["samples_written"] for m in sorted(markers, key=lambda m: m["shard_index"])}
        run.storage.write_json("shards/sizes.json", sizes)
        return _finish_splits(run, recipe, markers)


@register_layout("metadata", writes_images=False)
class MetadataLayout:
    """Only the Parquet sidecars (and subset.npy): for metadata-only pools such as DataComp's."""

    def write_shard(self, ctx, name: str, kept: pa.Table, files: StagedFiles) -> dict:
        return {"samples_written": kept.num_rows, **_write_splits(ctx, name, kept, files)}

    def finish(self, run: RunDir, recipe: Recipe, markers: list[dict], tasks) -> dict:
        return _finish_splits(run, recipe, markers)


def _finish_splits(run: RunDir, recipe: Recipe, markers: list[dict]) -> dict:
    if recipe.output.split is None:
        return {}
    return {"splits": {"folder": recipe.output.split.folder, "samples": finish_splits(run, recipe.output, markers)}}
