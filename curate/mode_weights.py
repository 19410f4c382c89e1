"""``curate mode-weights``: MoDE ensemble weights for a task's class names, from a finished run.

Reads the MoDE step's saved centres (``artifacts/<step id>/``) and encodes the class names with the
text encoder that embedded the captions (found in the run's recipe: the ``text_embed`` step whose
column the MoDE step clustered), so class names and centres live in the same space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from filters.mode import ModeParams, expert_weights
from filters.text_embed import TextEmbedParams


@dataclass(frozen=True)
class ModeWeights:
    step_id: str
    model: str
    classes: list[str]
    per_class: np.ndarray  # (C, E)

    @property
    def task(self) -> np.ndarray:
        return self.per_class.mean(axis=0)

    def to_json(self) -> dict:
        return {
            "step": self.step_id,
            "model": self.model,
            "task_weights": [round(float(w), 6) for w in self.task],
            "per_class": {
                c: [round(float(w), 6) for w in row] for c, row in zip(self.classes, self.per_class, strict=True)
            },
        }


def read_classes(spec: str) -> list[str]:
    """Class names from a file (one per line, or a JSON list) or a comma-separated list."""
    path = Path(spec)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        names = json.loads(text) if path.suffix == ".json" else text.splitlines()
    else:
        names = spec.split(",")
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"--classes: value {spec!r} holds no class names")
    return names


def _find_steps(run: Path, step_id: str | None) -> tuple[str, ModeParams, TextEmbedParams | None]:
    recipe_path = run / "recipe.yaml"
    if not recipe_path.is_file():
        raise ValueError(f"run: {str(run)!r} is not a run folder (no recipe.yaml)")
    steps = yaml.safe_load(recipe_path.read_text())["steps"]
    modes = [s for s in steps if s["name"] == "mode" and (step_id is None or (s.get("id") or s["name"]) == step_id)]
    if not modes:
        found = [s.get("id") or s["name"] for s in steps]
        raise ValueError(f"--step: no mode step {step_id or ''!r} in the run's recipe; its steps: {found}")
    mode_spec = modes[0]
    params = ModeParams.model_validate(mode_spec.get("params") or {})
    encoder = None
    for s in steps:
        if s["name"] == "text_embed":
            candidate = TextEmbedParams.model_validate(s.get("params") or {})
            if f"{candidate.prefix}_emb" == params.embedding_column:
                encoder = candidate
    return mode_spec.get("id") or mode_spec["name"], params, encoder


def mode_weights(
    run: str,
    classes: list[str],
    *,
    step_id: str | None = None,
    template: str = "{}",
    temperature: float = 0.1,
    model: str | None = None,
) -> ModeWeights:
    from filters.text_embed import TextEmbedder

    root = Path(run)
    sid, params, encoder_params = _find_steps(root, step_id)
    folder = root / "artifacts" / sid
    missing = [f for f in ("fine_centroids.npy", "fine_to_expert.npy", "mode.json") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"run: {run!r} has no MoDE centres for step {sid!r} (missing {missing}); did the run finish?")
    state = json.loads((folder / "mode.json").read_text())
    if model is not None:
        encoder_params = TextEmbedParams(model=model)
    if encoder_params is None:
        raise ValueError(
            f"--model: the run's recipe has no text_embed step writing {params.embedding_column!r}; name the "
            "sentence-transformers model that made those embeddings"
        )
    embedder = TextEmbedder(encoder_params.model_copy(update={"device": "auto"}))
    vectors = embedder.embed([template.format(c) for c in classes])
    weights = expert_weights(
        vectors,
        np.load(folder / "fine_centroids.npy"),
        np.load(folder / "fine_to_expert.npy"),
        num_experts=int(state["coarse_clusters"]),
        temperature=temperature,
    )
    return ModeWeights(step_id=sid, model=encoder_params.model, classes=classes, per_class=weights)
