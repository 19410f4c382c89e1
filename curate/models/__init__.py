"""Models that ship with curate: a tiny CLIP trained on the synthetic shapes world.

``curate-tiny-clip`` is a real open_clip model (ModifiedResNet image tower, transformer text tower)
with its own model config, trained by ``scripts/train_tiny_clip.py``. It knows only the shapes world
of ``curate.synth``; it exists so that the CLIP-score code path runs, and means something, on
machines with no internet and no GPU. See ``tiny_clip/MODEL_CARD.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TINY_CLIP_NAME = "curate-tiny-clip"
TINY_CLIP_DIR = Path(__file__).resolve().parent / "tiny_clip"
TINY_CLIP_CONFIG = TINY_CLIP_DIR / f"{TINY_CLIP_NAME}.json"
TINY_CLIP_WEIGHTS = TINY_CLIP_DIR / f"{TINY_CLIP_NAME}.safetensors"
# The pretrained "tag" that names the committed weights (as "openai" names OpenAI's for ViT-B-32).
TINY_CLIP_TAG = "curate"
# Trained on whole images squashed to a square: pool images have aspect ratios up to 2:1 and the
# captions name shapes near the edges, which open_clip's default centre crop would cut away.
TINY_CLIP_RESIZE_MODE = "squash"

_registered = False


def register_tiny_clip() -> str:
    """Make ``curate-tiny-clip`` known to open_clip (once per process); return its model name."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(TINY_CLIP_CONFIG)
        _registered = True
        logger.debug("registered open_clip model config %s", TINY_CLIP_CONFIG)
    return TINY_CLIP_NAME
