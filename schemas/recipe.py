"""Pydantic models of a recipe: input, output, Ray settings and an ordered list of steps.

A recipe is validated completely before any work starts, including each step's parameters
against the parameter model its component registered. Errors name the field, the value and
what is allowed (see ``curate.config.RecipeError``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Input formats that are not one registered reader: ``auto`` detects a reader per shard, ``urls``
# downloads a url/caption table with img2dataset and reads the result as img2dataset output.
SPECIAL_INPUT_FORMATS = ("auto", "urls")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(StrictModel):
    """Where the candidate pool is. ``path`` accepts brace expansion, globs and fsspec URLs."""

    path: str | None = None
    format: str = "auto"  # auto | urls | a registered reader (``curate list-steps`` lists them)
    # For ``urls`` pools: img2dataset download settings (passed through to img2dataset.download).
    url_col: str = "url"
    caption_col: str = "caption"
    download_processes: PositiveInt = 1
    download_threads: PositiveInt = 16
    download_timeout_s: PositiveInt = 10
    download_retries: int = Field(default=0, ge=0)
    samples_per_shard: PositiveInt = 10_000

    @field_validator("format")
    @classmethod
    def _known_format(cls, fmt: str) -> str:
        from curate.registry import reader_names

        allowed = [*SPECIAL_INPUT_FORMATS, *reader_names()]
        if fmt not in allowed:
            raise ValueError(f"unknown input format {fmt!r}; allowed: {', '.join(allowed)}")
        return fmt


class SplitSpec(StrictModel):
    """Also write one shard set per value of ``column`` (an int/string column, or a list of them for a
    sample in several sets, e.g. MoDE's ``mode_experts``): ``<folder>/<value>/NNNNNNNN.tar``."""

    column: str
    folder: str = Field(default="splits", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class OutputSpec(StrictModel):
    path: str | None = None
    # The column whose text goes into each sample's ``txt`` member (what training reads).
    caption_field: str = "caption"
    # samples: one WebDataset shard per input shard. metadata: only the Parquet sidecars (for
    # metadata-only pools such as DataComp's; reshard the subset later). buckets: token chunks in
    # one shard set per power-of-two length (D_k/), with manifest.json; needs tokenize and decompose.
    layout: str = "samples"  # a registered layout: samples | metadata | buckets
    tokens_per_shard: PositiveInt = 2**20  # bucket shards hold about this many tokens
    tokens_per_batch: PositiveInt = 2**14  # the loader's constant tokens per step
    curriculum: Literal["grow_p2", "uniform"] = "grow_p2"
    split: SplitSpec | None = None  # e.g. one shard set per MoDE data expert
    # copy: the sidecars hold every column, the source's arrays too (DataComp's npz embeddings: 2.5
    # KB a row). leave: those stay in the source, row-aligned with each sidecar by row_in_shard
    # (``source`` names the file); nothing else changes.
    source_arrays: Literal["copy", "leave"] = "copy"
    # copy: the sidecars hold every column of the source as read. leave: those the source's own file
    # gives back unchanged (DataComp's text, url, sizes, scores and face_bboxes as ``meta``) stay in
    # it; the catalog's ``samples`` view joins them back by ``source`` and ``row_in_shard``, and the
    # sidecars hold the uid, the bookkeeping, the decisions and what steps add or change. A reader
    # that cannot say how its columns read back (``sql_columns``), and a source named by a relative
    # path or on an object store, copy them. Metadata layout only.
    source_columns: Literal["copy", "leave"] = "copy"

    @model_validator(mode="after")
    def _leave_needs_metadata(self) -> OutputSpec:
        # Tars and split sets are written from the sidecar's rows: they need every column.
        if self.source_columns == "leave" and self.layout != "metadata":
            raise ValueError(
                f"output.source_columns: value 'leave' writes sidecars without the source's columns, which "
                f"layout {self.layout!r} writes into its files; allowed with layout 'metadata' only, else 'copy'"
            )
        if self.source_columns == "leave" and self.split is not None:
            raise ValueError(
                "output.source_columns: value 'leave' writes sidecars without the source's columns, which "
                "output.split writes into its shard sets; use 'copy' with output.split"
            )
        return self

    @field_validator("layout")
    @classmethod
    def _known_layout(cls, layout: str) -> str:
        from curate.registry import layout_names

        if layout not in layout_names():
            raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(layout_names())}")
        return layout


class RaySettings(StrictModel):
    address: str | None = None  # None: RAY_ADDRESS if set, else a local embedded Ray
    num_cpus: PositiveInt | None = None  # only for a local Ray
    progress_bars: bool = True
    # Input shards read concurrently; bounds memory together with the steps' batch sizes.
    read_concurrency: PositiveInt = 2
    # Reading is mostly I/O; a fraction of a CPU leaves room for the steps' actor pools.
    read_num_cpus: float = Field(default=0.5, gt=0)


class StepResources(StrictModel):
    batch_size: PositiveInt = 256
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    concurrency: PositiveInt = 1  # actors in the step's pool


class StepSpec(StrictModel):
    name: str  # a registered component, see ``curate list-steps``
    id: str | None = None  # unique in the recipe; defaults to ``name``
    params: dict[str, Any] = Field(default_factory=dict)
    # Which rows the step sees: ``kept`` (only rows still kept) or ``all`` (every readable row);
    # null takes the step's registered default (model steps ``kept``, DataComp filters ``all``).
    rows: Literal["kept", "all"] | None = None
    resources: StepResources = StepResources()

    @field_validator("name")
    @classmethod
    def _known_step(cls, name: str) -> str:
        from curate.registry import step_names

        allowed = step_names()
        if name not in allowed:
            raise ValueError(f"unknown step {name!r}; allowed: {', '.join(allowed)}")
        return name

    @field_validator("params")
    @classmethod
    def _valid_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from curate.registry import get_step

        name = info.data.get("name")
        if name is not None:  # an unknown name was already reported
            # pydantic nests the errors of this model under ``steps.N.params``.
            get_step(name).params_model.model_validate(params)
        return params

    @property
    def step_id(self) -> str:
        return self.id or self.name

    @property
    def sees(self) -> str:
        """The rows this step sees, after the recipe's override."""
        from curate.registry import get_step

        return self.rows or get_step(self.name).rows


class Recipe(StrictModel):
    name: str = "recipe"
    description: str = ""
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    ray: RaySettings = RaySettings()
    steps: list[StepSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.step_id in seen:
                raise ValueError(f"steps.{i}.id: value {step.step_id!r} is used twice; give each step a unique id")
            seen.add(step.step_id)
        from curate.registry import get_layout, get_reader

        layout = get_layout(self.output.layout)
        reader = get_reader(self.input.format) if self.input.format not in SPECIAL_INPUT_FORMATS else None
        if layout.writes_images and reader is not None and not reader.has_images:
            raise ValueError(
                f"output.layout: value {self.output.layout!r} writes images, but input.format "
                f"{self.input.format!r} has none; use layout 'metadata', then reshard the exported subset "
                "against the downloaded pool"
            )
        # A layout may have rules of its own (e.g. buckets need tokenize and decompose).
        if hasattr(layout.cls, "validate"):
            layout.cls.validate(self)
        return self
