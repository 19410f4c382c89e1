"""CLIP image and text embeddings and the CLIP score of every sample (open_clip models).

Each image is decoded once, at the size the model needs: JPEGs in draft mode (DCT scaling, so a
512 px JPEG is decoded at 64-128 px for a 64 px model), then the model's own validation transform.
Both embeddings are L2-normalised; ``{prefix}_score`` is their cosine similarity (float32), as in
DataComp. Embeddings are stored as float16 fixed-size lists (DataComp's ``.npz`` is float16 too).

Weights: an open_clip pretrained tag (``"datacomp_xl_s13b_b90k"``), a local checkpoint file, or,
only when the recipe says ``random_init: true``, random weights. ``curate-tiny-clip`` loads the
weights committed under ``curate/models/tiny_clip``. A tag whose weights are not in the local cache
fails at construction when they cannot be downloaded, instead of retrying for a minute per batch.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.models import TINY_CLIP_NAME, TINY_CLIP_RESIZE_MODE, TINY_CLIP_TAG, TINY_CLIP_WEIGHTS, register_tiny_clip
from curate.registry import register_step
from curate.stepkit import resolve_device, with_status
from schemas.tables import STATUS_FAILED_DECODE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_LOCAL_DIR = "local-dir:"
_HF_HUB = "hf-hub:"


class ClipEmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description='open_clip model name ("ViT-B-32", "ViT-L-14", "curate-tiny-clip")')
    pretrained: str | None = Field(default=None, description="open_clip pretrained tag, or a checkpoint path")
    random_init: bool = Field(default=False, description="random weights (smoke tests of real architectures)")
    prefix: str = Field(default="clip", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="column name prefix")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(default="auto", description="auto: fp16 on cuda")
    inference_batch_size: int = Field(default=64, ge=1)

    @field_validator("model")
    @classmethod
    def _openai_style_name(cls, value: str) -> str:
        # "ViT-B/32" (OpenAI's spelling) is open_clip's "ViT-B-32"; open_clip itself accepts both.
        return value if value.startswith((_LOCAL_DIR, _HF_HUB)) else value.replace("/", "-")

    @model_validator(mode="after")
    def _check_model_and_weights(self) -> ClipEmbedParams:
        if self.random_init and self.pretrained is not None:
            raise ValueError(f"random_init: true conflicts with pretrained: {self.pretrained!r}; give one of them")
        if self.model.startswith(_HF_HUB):
            raise ValueError(
                f"model: value {self.model!r}: hf-hub models are not fetched by this step; download the repo "
                f"(huggingface-cli download ORG/REPO --local-dir DIR) and use model: 'local-dir:DIR'"
            )
        if self.model.startswith(_LOCAL_DIR):
            folder = Path(self.model[len(_LOCAL_DIR) :])
            if not (folder / "open_clip_config.json").is_file():
                raise ValueError(f"model: value {self.model!r}: no open_clip_config.json in {folder}")
            if self.pretrained is not None:
                raise ValueError(f"pretrained: value {self.pretrained!r} is ignored with a local-dir: model; drop it")
            return self
        _check_model_name(self.model)
        if self.model == TINY_CLIP_NAME:
            if self.pretrained not in (None, TINY_CLIP_TAG) and not Path(self.pretrained).is_file():
                raise ValueError(
                    f"pretrained: value {self.pretrained!r} is neither {TINY_CLIP_TAG!r} (or null: the committed "
                    f"weights) nor an existing checkpoint file"
                )
            return self
        if self.pretrained is None:
            if not self.random_init:
                raise ValueError(
                    f"pretrained: value None for model {self.model!r}: give a pretrained tag or a checkpoint path, "
                    f"or set random_init: true to use random weights on purpose"
                )
            return self
        _check_pretrained(self.model, self.pretrained)
        return self


def _check_model_name(model: str) -> None:
    import open_clip

    register_tiny_clip()
    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=5)
        hint = f"did you mean {close}? " if close else ""
        examples = [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", TINY_CLIP_NAME) if m in known]
        raise ValueError(
            f"model: value {model!r} is not an open_clip model; {hint}e.g. {examples} "
            f"({len(known)} names in open_clip.list_models())"
        )


def _check_pretrained(model: str, pretrained: str) -> None:
    import open_clip
    from open_clip.pretrained import is_pretrained_cfg

    if is_pretrained_cfg(model, pretrained):
        return
    looks_like_path = os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)
    if looks_like_path and not Path(pretrained).is_file():
        raise ValueError(f"pretrained: checkpoint file {pretrained!r} does not exist")
    if not looks_like_path and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"pretrained: value {pretrained!r} is not a pretrained tag of model {model!r} (tags: {tags}) "
            f"nor an existing checkpoint file"
        )


# -- resolving pretrained weights without hanging when offline ---------------------------------------


def _hf_offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names open_clip would fetch, preferred first) of a tag's ``hf_hub`` entry."""
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename]
    if filename == "open_clip_pytorch_model.bin":
        names.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def cached_checkpoint(cfg: dict[str, Any]) -> str | None:
    """The local file of a pretrained tag's weights if the HF or URL cache already holds it."""
    if "file" in cfg:
        return cfg["file"] if Path(cfg["file"]).is_file() else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, names = _hf_candidates(cfg["hf_hub"])
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and Path(found).is_file():
                return found
    if cfg.get("url"):
        target = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if target.is_file():
            return str(target)
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # the proxy, not us, decides; let the download try
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_pretrained(model: str, tag: str) -> str:
    """Local path of a tag's weights: from the cache, else downloaded if the source can be reached."""
    import open_clip
    from huggingface_hub import constants
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    found = cached_checkpoint(cfg)
    if found is not None:
        return found
    if cfg.get("hf_hub"):
        source = f"{os.environ.get('HF_ENDPOINT') or constants.ENDPOINT}/{_hf_candidates(cfg['hf_hub'])[0]}"
    else:
        source = cfg.get("url", "")
    where = f"pretrained: tag {tag!r} of model {model!r} is not in the local cache and needs a download from {source}"
    fix = "download it where there is internet (or set HF_HOME to a cache that has it), or give a checkpoint path"
    if cfg.get("hf_hub") and _hf_offline():
        raise ValueError(f"{where}, but HF_HUB_OFFLINE is set (offline); {fix}")
    if not _reachable(source):
        raise ValueError(f"{where}, but its host cannot be reached (offline?); {fix}")
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - hub and urllib raise many types; all mean "no weights"
        raise ValueError(f"{where}, and the download failed ({type(exc).__name__}: {exc}); {fix}") from exc


def _tag_preprocess(model: str, tag: str) -> dict[str, Any]:
    """A tag's own preprocessing (create_model_and_transforms kwargs): open_clip applies it only when
    it is given the tag, and we give it the tag's file."""
    from open_clip import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    tag_gelu, model_gelu = cfg.get("quick_gelu", False), (get_model_config(model) or {}).get("quick_gelu", False)
    if tag_gelu != model_gelu:  # open_clip warns about the same mismatch when given the tag
        logger.warning(
            "pretrained %r of %r was trained with quick_gelu=%s, the model has %s", tag, model, tag_gelu, model_gelu
        )
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    out = {arg: cfg[key] for key, arg in keys.items() if cfg.get(key) is not None}
    if cfg.get("resize_mode"):
        out["image_resize_mode"] = cfg["resize_mode"]
    return out


# -- decoding ----------------------------------------------------------------------------------------


def decode_image(data: bytes | None, size: int) -> Image.Image:
    """Decode once at about ``size`` px: JPEG draft mode picks the smallest DCT scale >= size."""
    if not data:
        raise ValueError("no image bytes")
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        return img.convert("RGB")  # decodes now, so truncated or corrupt data raises here


def _fixed_size_list(matrix: np.ndarray, dim: int, valid: np.ndarray) -> pa.FixedSizeListArray:
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float16).reshape(-1), type=pa.float16())
    mask = None if valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


@register_step("clip_embed", params=ClipEmbedParams, needs_pixels=True, rows="kept")
class ClipEmbedder:
    """CLIP image and text embeddings (normalised, float16) and the CLIP score (cosine) per sample."""

    def __init__(self, params: ClipEmbedParams):
        import open_clip
        import torch

        self.params = params
        self.device = resolve_device(params.device)
        precision = params.precision if params.precision != "auto" else ("fp16" if self.device == "cuda" else "fp32")
        self.precision = precision
        kwargs: dict[str, Any] = {"precision": precision, "device": self.device}
        name, pretrained = params.model, params.pretrained
        if name == TINY_CLIP_NAME:
            register_tiny_clip()
            kwargs["image_resize_mode"] = TINY_CLIP_RESIZE_MODE
        if params.random_init:
            kwargs["pretrained_text"] = False  # random means random: no HF text-tower weights either
        elif name == TINY_CLIP_NAME:
            pretrained = str(TINY_CLIP_WEIGHTS) if pretrained in (None, TINY_CLIP_TAG) else pretrained
            if not Path(pretrained).is_file():
                raise ValueError(f"pretrained: {pretrained} is missing; run scripts/train_tiny_clip.py")
        elif pretrained is not None and not Path(pretrained).is_file():
            # Load the tag's file by path (no hub call when cached) with the preprocessing the tag defines.
            kwargs.update(_tag_preprocess(name, pretrained))
            pretrained = resolve_pretrained(name, pretrained)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, **kwargs)
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001 - name the step's params in whatever open_clip raised
            raise ValueError(f"model: {name!r} with pretrained: {pretrained!r} could not be built: {exc}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.input_dtype = open_clip.get_input_dtype(precision) or torch.float32
        size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
        self.image_size = max(size) if isinstance(size, (tuple, list)) else int(size)
        self.embed_dim = self._embed_dim()
        logger.info(
            "clip_embed: %s (%s) on %s, %s, %d px, %d-d",
            name,
            "random weights" if params.random_init else pretrained,
            self.device,
            precision,
            self.image_size,
            self.embed_dim,
        )

    def _embed_dim(self) -> int:
        import torch

        with torch.inference_mode():
            return int(self._encode_text([""]).shape[1])

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        import torch.nn.functional as F

        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device, dtype=self.input_dtype)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    def _batched(self, encode, items: list) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.embed_dim), np.float32)]
        bs = self.params.inference_batch_size
        with torch.inference_mode():
            for start in range(0, len(items), bs):
                out.append(encode(list(items[start : start + bs])).cpu().numpy())
        return np.concatenate(out)

    def encode_texts(self, prompts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings (float32, shape ``(len(prompts), embed_dim)``)."""
        return self._batched(self._encode_text, prompts)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings (float32, shape ``(len(images), embed_dim)``) of decoded images."""
        return self._batched(self._encode_images, images)

    def fills_context(self, texts: list[str]) -> list[bool]:
        """Whether each text fills the text encoder's whole context (so the tokenizer cut it, or it just fits)."""
        tokens = self.tokenizer(texts)
        return [bool(row[-1] != 0) for row in tokens.tolist()]

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        n, dim, bs = batch.num_rows, self.embed_dim, self.params.inference_batch_size
        image_emb = np.zeros((n, dim), np.float32)
        text_emb = np.zeros((n, dim), np.float32)
        scores = np.zeros(n, np.float32)
        valid = np.zeros(n, bool)
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        captions = batch["caption"].to_pylist()
        images = batch["image"]
        with torch.inference_mode():
            for start in range(0, n, bs):
                rows, decoded = [], []
                # One slice at a time, so only inference_batch_size images are decoded at once.
                for offset, data in enumerate(images.slice(start, bs).to_pylist()):
                    i = start + offset
                    try:
                        decoded.append(decode_image(data, self.image_size))
                        rows.append(i)
                    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                        status[i], errors[i] = STATUS_FAILED_DECODE, f"{type(exc).__name__}: {exc}"
                if not rows:
                    continue
                img = self._encode_images(decoded)
                txt = self._encode_text([captions[i] or "" for i in rows])
                image_emb[rows] = img.cpu().numpy()
                text_emb[rows] = txt.cpu().numpy()
                scores[rows] = (img * txt).sum(dim=-1).cpu().numpy()
                valid[rows] = True
        p = self.params.prefix
        batch = with_status(batch, status, errors)
        batch = batch.append_column(f"{p}_image_emb", _fixed_size_list(image_emb, dim, valid))
        batch = batch.append_column(f"{p}_text_emb", _fixed_size_list(text_emb, dim, valid))
        return batch.append_column(f"{p}_score", pa.array(scores, pa.float32(), mask=~valid))
