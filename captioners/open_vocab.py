"""Open-vocabulary detection prompts: class names turned into the text embeddings that YOLO-World and
YOLOE heads take, from a text encoder we have offline.

ultralytics' own ``set_classes(names)`` encodes the names with CLIP ViT-B/32 (YOLO-World) or
MobileCLIP (YOLOE), both fetched from the network on first use. Here the names are encoded by an
open_clip text tower (``filters.clip_embed.ClipEmbedder``: the committed tiny CLIP, or real weights
by name, e.g. ``ViT-B-32``/``openai``, which is exactly the encoder YOLO-World was trained with) and
mapped to the detector's 512-wide prompt space by a fixed projection: L2-normalised, then zero-padded
when the encoder is narrower (the tiny CLIP's 128). Zero-padding loses nothing, and both heads only
ever see the prompts through learnt linear layers and a cosine (contrastive) head, so a detector
trained with padded prompts (``scripts/train_tiny_yolo_world.py``) sees at inference exactly the
vectors it was trained on.

Prompts are per image: the embeddings passed to the network are ``(batch, N, 512)``, each row the
image's own class names, padded to the batch's longest list by repeating the image's names
round-robin. YOLO-World's neck attends to the prompts with a max over them (``MaxSigmoidAttnBlock``),
so a repeated name changes nothing; classes at index ``>= len(names)`` are copies and are dropped. An
image's boxes therefore never depend on what other images shared its batch.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

PROMPT_WIDTH = 512  # YOLO-World's and YOLOE's text embedding width (CLIP ViT-B/32, MobileCLIP)
Family = Literal["world", "yoloe"]


def detector_family(net: Any) -> Family | None:
    """``"world"`` (YOLO-World), ``"yoloe"`` (YOLOE with text prompts) or None (a closed-set YOLO)."""
    from ultralytics.nn.tasks import WorldModel, YOLOEModel

    if isinstance(net, WorldModel):
        return "world"
    if isinstance(net, YOLOEModel):
        if hasattr(net.model[-1], "lrpc"):
            raise ValueError("weights: a prompt-free YOLOE (-pf) has a built-in vocabulary; use the text-prompt YOLOE")
        return "yoloe"
    return None


def project_prompts(embeddings: np.ndarray) -> np.ndarray:
    """Rows L2-normalised and zero-padded to :data:`PROMPT_WIDTH` (the fixed projection)."""
    n, width = embeddings.shape
    if width > PROMPT_WIDTH:
        raise ValueError(
            f"text_model: its embeddings are {width} wide, the detector's prompts {PROMPT_WIDTH}; use an encoder "
            f"of at most {PROMPT_WIDTH} (ViT-B-32 for YOLO-World's own)"
        )
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    out = np.zeros((n, PROMPT_WIDTH), np.float32)
    out[:, :width] = embeddings / np.where(norms > 0, norms, 1.0)
    return out


class PromptEncoder:
    """Class names -> projected prompt embeddings, each name encoded once per process."""

    def __init__(self, encoder: Any, template: str = "{}", cache_limit: int = 100_000):
        self.encoder = encoder  # a filters.clip_embed.ClipEmbedder (anything with encode_texts)
        self.template = template
        self.cache_limit = cache_limit
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, names: list[str]) -> np.ndarray:
        """(len(names), PROMPT_WIDTH) float32."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.cache_limit:
                self._cache.clear()  # bounded memory for per-sample phrases; names recur mostly within a shard
            vectors = project_prompts(self.encoder.encode_texts([self.template.format(n) for n in missing]))
            self._cache.update(zip(missing, vectors, strict=True))
        if not names:
            return np.zeros((0, PROMPT_WIDTH), np.float32)
        return np.stack([self._cache[n] for n in names])


def padded_prompts(per_image: list[list[str]], encode: PromptEncoder) -> tuple[np.ndarray, int]:
    """(batch, N, PROMPT_WIDTH) prompts (round-robin padding of each image's names) and how many boxes
    per kept box to ask NMS for, so that dropping the copies still leaves ``max_boxes`` real ones."""
    width = max(len(names) for names in per_image)
    out = np.zeros((len(per_image), width, PROMPT_WIDTH), np.float32)
    copies = 1
    for i, names in enumerate(per_image):
        vectors = encode(names)
        out[i] = vectors[np.arange(width) % len(names)]
        copies = max(copies, -(-width // len(names)))
    return out, copies


def set_prompts(net: Any, family: Family, prompts: Any) -> None:
    """Give the network ``prompts`` (a ``(batch, N, 512)`` tensor on its device) for the next forward."""
    head = net.model[-1]
    if family == "world":
        net.txt_feats = prompts
    else:
        net.pe = head.get_tpe(prompts)  # YOLOE's own text projection (reprta), as its get_text_pe applies
    head.nc = prompts.shape[1]
