"""What the report reads of a run: its stats, resolved recipe, barrier states and catalog.

Everything comes from the run folder itself (no recomputation): ``stats.json`` for the funnel,
``recipe.yaml`` for the steps and their thresholds, ``global_state.json`` for what each barrier
decided, and the catalog's ``samples`` view for distributions and galleries (only the columns a
section needs, aggregated in DuckDB where the rows are many).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import yaml

from curate.catalog import connect
from curate.rundir import RunDir
from curate.stepkit import quote_identifier


@dataclass(frozen=True)
class StepInfo:
    step_id: str
    name: str
    params: dict


class RunFacts:
    def __init__(self, root: str | Path):
        self.run = RunDir(root)
        if not self.run.stats.exists():
            raise FileNotFoundError(
                f"{self.run.stats} does not exist: is {root} a finished curate run? (`curate status {root}` says "
                "where it stands)"
            )
        self.stats = json.loads(self.run.stats.read_text())
        self.recipe = yaml.safe_load((self.run.root / "recipe.yaml").read_text())
        states = self.run.root / "global_state.json"
        self.states: dict = json.loads(states.read_text()) if states.exists() else {}
        self.con: duckdb.DuckDBPyConnection = connect(self.run.root)
        self.columns = {row[0]: row[1] for row in self.con.execute("DESCRIBE samples").fetchall()}

    @functools.cached_property
    def images(self):
        """Image bytes of samples, read again from the run's input (``curate.sample_images``)."""
        from curate.sample_images import RunImages

        return RunImages(self.run)

    def close(self) -> None:
        self.con.close()

    @property
    def steps(self) -> list[StepInfo]:
        return [StepInfo(s.get("id") or s["name"], s["name"], s.get("params") or {}) for s in self.recipe["steps"]]

    def steps_named(self, *names: str) -> list[StepInfo]:
        return [s for s in self.steps if s.name in names]

    def param(self, step: StepInfo, key: str, default=None):
        """A step's parameter as the run used it (its default when the recipe left it out)."""
        from curate.registry import get_step

        if key in step.params:
            return step.params[key]
        field = get_step(step.name).params_model.model_fields.get(key)
        return default if field is None or field.is_required() else field.get_default(call_default_factory=True)

    def has(self, *columns: str) -> bool:
        return all(c in self.columns for c in columns)

    def values(self, column: str, where: str = "true") -> np.ndarray:
        """A numeric column's non-null values (one column of every matching row: 8 bytes a row)."""
        col = quote_identifier(column)
        sql = f"SELECT {col}::DOUBLE AS v FROM samples WHERE {col} IS NOT NULL AND ({where})"
        return np.asarray(self.con.execute(sql).fetchnumpy()["v"], dtype=np.float64)

    def rows(self, sql: str, params: list | None = None) -> list[dict]:
        cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
