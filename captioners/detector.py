"""Object detection with ultralytics: a closed-set YOLO, or an open-vocabulary YOLO-World / YOLOE
told per image which names to look for; boxes, labels and scores per image.

The detector is a perception expert for dense captioning (DenseFusion-style hints, GBC entity
boxes). Each image is decoded once, at about the size the model sees: JPEGs in draft mode (DCT
scaling) so that the longest side stays at least ``image_size``; then ultralytics' own letterbox and
NMS run in batches of ``inference_batch_size`` (``model.predict`` on a list of images). Every image is
letterboxed to the same ``image_size`` square (``rect=False``), so a sample's boxes do not depend on
which other images share its batch.

Columns (null for rows that failed): ``{prefix}_boxes`` (list of ``[x1, y1, x2, y2]`` normalised
to 0..1 by the image's width and height, float32 rounded to 3 decimals, best score first),
``{prefix}_labels`` (list<string>, the model's class names), ``{prefix}_scores`` (list<float32>)
and ``{prefix}_model`` (the ``weights`` value).

Open vocabulary: weights whose network is a YOLO-World (``WorldModel``) or YOLOE take the class names
from ``classes`` (one list for every image) or ``classes_column`` (a list<string> column: each row's
own names, e.g. the phrases an MLLM named). The names are encoded by ``text_model`` /
``text_pretrained`` (open_clip; default the committed tiny CLIP, the encoder ``curate-tiny-yolo-world``
was trained with; YOLO-World's published weights want ``ViT-B-32`` / ``openai``) through
``prompt_template``, then projected as ``captioners.open_vocab`` explains. ``{prefix}_labels`` are
then the given names. A row whose list is empty or null gets no boxes (not a failure).

Weights: ``curate-tiny-yolo`` (the default: the model committed under
``curate/models/tiny_yolo``, trained by ``scripts/train_tiny_yolo.py`` on the shapes world) or a
local ``.pt`` file. The step never downloads: ultralytics runs with ``YOLO_OFFLINE=1``,
``YOLO_AUTOINSTALL=0`` and a config folder of our own (``_ultralytics()``), so a name such as
``yolo11n.pt`` that is not a local file fails at validation instead of reaching for GitHub.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import curate.models
from captioners.open_vocab import PromptEncoder, detector_family, padded_prompts, set_prompts
from curate.models import TINY_CLIP_NAME
from curate.registry import register_step
from curate.stepkit import StepInputError, resolve_device, with_status
from filters.clip_embed import ClipEmbedder, ClipEmbedParams
from schemas.tables import STATUS_FAILED_DECODE

logger = logging.getLogger(__name__)

TINY_YOLO_NAME = "curate-tiny-yolo"
TINY_YOLO_DIR = Path(curate.models.__file__).resolve().parent / "tiny_yolo"
TINY_YOLO_WEIGHTS = TINY_YOLO_DIR / f"{TINY_YOLO_NAME}.pt"
TINY_WORLD_NAME = "curate-tiny-yolo-world"
TINY_WORLD_DIR = Path(curate.models.__file__).resolve().parent / "tiny_yolo_world"
TINY_WORLD_WEIGHTS = TINY_WORLD_DIR / f"{TINY_WORLD_NAME}.pt"
COMMITTED_WEIGHTS = {TINY_YOLO_NAME: TINY_YOLO_WEIGHTS, TINY_WORLD_NAME: TINY_WORLD_WEIGHTS}
WEIGHT_SUFFIXES = (".pt", ".pth")
DEFAULT_IMAGE_SIZE = 640  # ultralytics' default, for weights that do not record theirs

BOX_TYPE = pa.list_(pa.list_(pa.float32(), 4))
LABEL_TYPE = pa.list_(pa.string())
SCORE_TYPE = pa.list_(pa.float32())


# -- ultralytics, offline and inside folders we own ---------------------------------------------------


def ultralytics_config_dir() -> Path:
    """Our own ``YOLO_CONFIG_DIR``: ``~/.cache/curate/ultralytics``, or the temp dir if that is read-only."""
    home = Path(os.environ.get("CURATE_CACHE_DIR", Path.home() / ".cache" / "curate")) / "ultralytics"
    try:
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            return home
    except OSError:
        pass
    alt = Path(tempfile.gettempdir()) / f"curate-ultralytics-{os.getuid()}"
    alt.mkdir(parents=True, exist_ok=True)
    return alt


def _font_file() -> Path | None:
    """A TTF shipped by an installed package (matplotlib's DejaVu Sans, else any of PIL's)."""
    try:
        import matplotlib

        found = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if found.is_file():
            return found
    except ImportError:
        pass
    import PIL

    return next(iter(sorted(Path(PIL.__file__).parent.rglob("*.ttf"))), None)


def _place_fonts(user_dir: Path) -> None:
    """``check_font`` looks in the config folder first and otherwise goes to the network, even offline."""
    user_dir.mkdir(parents=True, exist_ok=True)
    font = _font_file()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = user_dir / name
        if font is not None and not target.exists():
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            shutil.copyfile(font, tmp)
            os.replace(tmp, target)  # atomic: several actors may place it at once


def _ultralytics() -> Any:
    """Import ultralytics offline: no downloads, no pip installs, no analytics, settings in our folder.

    Must run before anything imports ultralytics (its config folder and online flag are read at
    import); a process that imported it already keeps whatever it had, and is warned.
    """
    if "ultralytics" not in sys.modules:
        config = ultralytics_config_dir()
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "0"
        os.environ["YOLO_CONFIG_DIR"] = str(config)
        _place_fonts(config / "Ultralytics")  # ultralytics' USER_CONFIG_DIR is YOLO_CONFIG_DIR/Ultralytics
    elif os.environ.get("YOLO_OFFLINE") != "1":
        logger.warning("ultralytics was imported before curate set YOLO_OFFLINE=1; it may try the network")
    import ultralytics
    from ultralytics.utils import SETTINGS

    config = Path(os.environ.get("YOLO_CONFIG_DIR", ultralytics_config_dir()))
    wanted = {
        "sync": False,
        # Integrations that would log runs elsewhere (Ray Tune's would join the Ray session of a run).
        **{name: False for name in ("raytune", "clearml", "comet", "dvc", "mlflow", "tensorboard", "wandb")},
        "weights_dir": str(config / "weights"),
        "runs_dir": str(config / "runs"),
        "datasets_dir": str(config / "datasets"),
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)  # written once; later imports find it as is
    return ultralytics


# -- params ---------------------------------------------------------------------------------------------


def resolve_weights(value: str) -> Path:
    """The local file a ``weights`` value names; raises ValueError naming the field otherwise."""
    if value in COMMITTED_WEIGHTS:
        committed = COMMITTED_WEIGHTS[value]
        if not committed.is_file():
            script = "train_tiny_yolo_world.py" if value == TINY_WORLD_NAME else "train_tiny_yolo.py"
            raise ValueError(f"weights: {committed} is missing; run scripts/{script}")
        return committed
    path = Path(value).expanduser()
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"weights: file {value!r} is not a PyTorch checkpoint ({', '.join(WEIGHT_SUFFIXES)})")
        return path
    if os.sep in value or path.suffix in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights: value {value!r} is not an existing file; this step never downloads (ultralytics runs "
            f"with YOLO_OFFLINE=1): fetch the weights where there is internet and give their path, or use "
            f"{TINY_YOLO_NAME!r}"
        )
    raise ValueError(f"weights: value {value!r} is none of {sorted(COMMITTED_WEIGHTS)} nor a path to a .pt file")


class DetectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str = Field(
        default=TINY_YOLO_NAME, description=f"{TINY_YOLO_NAME!r} (committed) or a local ultralytics .pt file"
    )
    confidence: float = Field(default=0.25, ge=0.0, le=1.0, description="minimum box score")
    iou: float = Field(default=0.7, gt=0.0, le=1.0, description="NMS IoU threshold")
    max_boxes: int = Field(default=20, ge=1, description="most boxes kept per image")
    image_size: int | None = Field(
        default=None, ge=32, description="inference size (px); null: the size the weights were trained at"
    )
    prefix: str = Field(default="det", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="column name prefix")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    half: Literal["auto", "true", "false"] = Field(default="auto", description="fp16 inference; auto: on cuda")
    inference_batch_size: int = Field(default=32, ge=1)
    classes: list[str] | None = Field(
        default=None, description="open-vocabulary weights: the names to detect in every image"
    )
    classes_column: str | None = Field(
        default=None, description="open-vocabulary weights: a list<string> column with each row's own names"
    )
    text_model: str = Field(default=TINY_CLIP_NAME, description="open_clip model that encodes the class names")
    text_pretrained: str | None = Field(default=None, description="its pretrained tag or checkpoint")
    prompt_template: str = Field(default="{}", description='how a name becomes a prompt, "{}" for the name')

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: str) -> str:
        resolve_weights(value)
        return value

    @field_validator("classes")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            value = list(dict.fromkeys(v.strip() for v in value if v and v.strip()))
            if not value:
                raise ValueError("classes: give at least one name (or use classes_column)")
        return value

    @field_validator("prompt_template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError(f'prompt_template: value {value!r} must contain "{{}}" exactly once')
        return value

    @model_validator(mode="after")
    def _one_source_of_names(self) -> DetectParams:
        if self.classes is not None and self.classes_column is not None:
            raise ValueError("classes and classes_column: give one of them, not both")
        if self.open_vocabulary:  # open_clip's name checks import torch: only when the names are encoded
            ClipEmbedParams(model=self.text_model, pretrained=self.text_pretrained)  # fails naming the field
        return self

    @property
    def open_vocabulary(self) -> bool:
        return self.classes is not None or self.classes_column is not None


# -- decoding -------------------------------------------------------------------------------------------


def decode_for_detection(data: bytes | None, size: int) -> Image.Image:
    """Decode once, RGB; a JPEG in draft mode at the smallest DCT scale whose longest side stays >= size."""
    if not data:
        raise ValueError("no image bytes")
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            w, h = img.size
            scale = size / max(w, h)
            if scale < 1:
                img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        return img.convert("RGB")  # decodes now: truncated or corrupt data raises here


def trained_image_size(model: Any) -> int | None:
    """The ``imgsz`` a checkpoint was trained at (ultralytics keeps its train args), if recorded."""
    size = (getattr(model, "overrides", None) or {}).get("imgsz") or (getattr(model, "ckpt", None) or {}).get(
        "train_args", {}
    ).get("imgsz")
    if isinstance(size, (list, tuple)):
        size = max(size)
    return int(size) if size else None


@register_step("detect", params=DetectParams, needs_pixels=True, rows="kept")
class YoloDetector:
    """Object detection (ultralytics YOLO; YOLO-World / YOLOE with names per image): normalised boxes,
    labels and scores per image."""

    def __init__(self, params: DetectParams):
        self.params = params
        ultralytics = _ultralytics()
        path = resolve_weights(params.weights)
        self.device = resolve_device(params.device)
        self.half = params.half == "true" or (params.half == "auto" and self.device == "cuda")
        try:
            model = ultralytics.YOLO(str(path), task="detect")
        except Exception as exc:  # noqa: BLE001 - name the field in whatever ultralytics raised
            raise ValueError(f"weights: {params.weights!r} ({path}) could not be loaded: {exc}") from exc
        if model.task != "detect":
            raise ValueError(f"weights: {params.weights!r} is a {model.task!r} model, not a detector")
        self.model = model
        self.family = detector_family(model.model)
        if self.family is None and params.open_vocabulary:
            raise ValueError(
                f"classes / classes_column: weights {params.weights!r} are a closed-set detector (its classes are "
                f"fixed); open-vocabulary names need YOLO-World or YOLOE weights, e.g. {TINY_WORLD_NAME!r}"
            )
        if self.family is not None and not params.open_vocabulary:
            raise ValueError(
                f"classes: weights {params.weights!r} are an open-vocabulary {self.family} detector; give the names "
                f"to look for (classes: [...]) or a column of them (classes_column: ...)"
            )
        self.names = {int(k): str(v) for k, v in model.names.items()}
        self.image_size = params.image_size or trained_image_size(model) or DEFAULT_IMAGE_SIZE
        self.prompts: PromptEncoder | None = None
        if self.family is not None:
            encoder = ClipEmbedder(
                ClipEmbedParams(model=params.text_model, pretrained=params.text_pretrained, device=params.device)
            )
            self.prompts = PromptEncoder(encoder, params.prompt_template)
            # The predictor (a deep copy of the network and, on CUDA, a batch-1 warm-up) is set up by the first
            # predict: do it now with one prompt, so that later per-image prompts go to the copy that runs and
            # never meet the warm-up.
            self._prompt([["object"]])
            self.predict([Image.new("RGB", (self.image_size, self.image_size))])
        logger.info(
            "detect: %s (%s) on %s%s, %d px, %s",
            path,
            self.family or "closed set",
            self.device,
            " fp16" if self.half else "",
            self.image_size,
            f"{len(self.names)} classes" if self.family is None else "names per image",
        )

    def _prompt(self, per_image: list[list[str]]) -> int:
        """Set per-image prompts on the network; returns NMS's box budget multiplier (see padded_prompts)."""
        import torch

        assert self.prompts is not None
        prompts, copies = padded_prompts(per_image, self.prompts)
        dtype = torch.float16 if self.half else torch.float32
        with torch.no_grad():  # YOLOE projects the prompts with its own layers: keep no graph (it is deep-copied)
            set_prompts(self._network(), self.family, torch.from_numpy(prompts).to(self.device, dtype=dtype))
        return copies

    def _network(self) -> Any:
        """The network that runs: the predictor's own deep copy once predict has set it up."""
        predictor = self.model.predictor
        return predictor.model.model if predictor is not None else self.model.model

    def predict(self, images: list[Image.Image], box_budget: int = 1) -> list[Any]:
        """ultralytics ``Results`` of one batch of decoded RGB images."""
        p = self.params
        return self.model.predict(
            images,
            imgsz=self.image_size,
            conf=p.confidence,
            iou=p.iou,
            max_det=p.max_boxes * box_budget,
            device=self.device,
            quantize=16 if self.half else None,  # ultralytics 8.4 spelling of half=True
            batch=len(images),
            rect=False,  # every image letterboxed to the same square: boxes never depend on the batch
            verbose=False,
            save=False,
        )

    def detect(
        self, images: list[Image.Image], names: list[list[str]] | None = None
    ) -> list[tuple[np.ndarray, list[str], np.ndarray]]:
        """(boxes ``[x1, y1, x2, y2]`` normalised, rounded to 3 decimals; labels; scores), best first, of
        decoded RGB images, in batches of ``inference_batch_size``; ``names``: each image's own names
        (open vocabulary; an image with none gets no boxes), None for a closed-set detector."""
        out: list[tuple[np.ndarray, list[str], np.ndarray]] = []
        bs = self.params.inference_batch_size
        empty = (np.zeros((0, 4), np.float32), [], np.zeros((0,), np.float32))
        for start in range(0, len(images), bs):
            chunk = list(range(start, min(len(images), start + bs)))
            asked = [i for i in chunk if names is None or names[i]]
            results: dict[int, tuple] = dict.fromkeys(chunk, empty)
            if asked:
                budget = self._prompt([names[i] for i in asked]) if names is not None else 1
                for i, result in zip(asked, self.predict([images[i] for i in asked], budget), strict=True):
                    results[i] = self._read(result, names[i] if names is not None else None)
            out += [results[i] for i in chunk]
        return out

    def _read(self, result: Any, names: list[str] | None) -> tuple[np.ndarray, list[str], np.ndarray]:
        found = result.boxes
        cls = found.cls.cpu().numpy().astype(np.int64)
        xyxyn = np.round(found.xyxyn.cpu().numpy().astype(np.float32).clip(0.0, 1.0), 3)
        conf = found.conf.cpu().numpy().astype(np.float32)
        if names is not None:  # drop the padding copies (sorted by score already: keep the first)
            own = np.flatnonzero(cls < len(names))[: self.params.max_boxes]
            xyxyn, conf, cls = xyxyn[own], conf[own], cls[own]
            return xyxyn, [names[c] for c in cls], conf
        return xyxyn, [self.names[int(c)] for c in cls], conf

    def _names_per_row(self, batch: pa.Table) -> list[list[str]] | None:
        """Each row's names (open vocabulary), or None (closed set)."""
        p = self.params
        if p.classes is not None:
            return [list(p.classes)] * batch.num_rows
        if p.classes_column is None:
            return None
        if p.classes_column not in batch.column_names:
            raise StepInputError(
                f"classes_column: column {p.classes_column!r} is not in the batch ({batch.column_names})"
            )
        column = batch[p.classes_column]
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise StepInputError(f"classes_column: column {p.classes_column!r} is {column.type}, not a list of strings")
        return [list(dict.fromkeys(s.strip() for s in names or [] if s and s.strip())) for names in column.to_pylist()]

    def __call__(self, batch: pa.Table) -> pa.Table:
        n, bs = batch.num_rows, self.params.inference_batch_size
        boxes: list[Any] = [None] * n
        labels: list[Any] = [None] * n
        scores: list[Any] = [None] * n
        status = batch["status"].to_pylist()
        errors = batch["error_message"].to_pylist()
        names = self._names_per_row(batch)
        images = batch["image"]
        for start in range(0, n, bs):
            rows, decoded = [], []
            # One slice at a time, so at most inference_batch_size images are decoded at once.
            for offset, data in enumerate(images.slice(start, bs).to_pylist()):
                i = start + offset
                try:
                    image = decode_for_detection(data, self.image_size)
                except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
                    status[i], errors[i] = STATUS_FAILED_DECODE, f"{type(exc).__name__}: {exc}"
                    continue
                if names is not None and not names[i]:
                    boxes[i], labels[i], scores[i] = [], [], []  # nothing asked for, nothing found
                    continue
                decoded.append(image)
                rows.append(i)
            if not rows:
                continue
            found = self.detect(decoded, [names[i] for i in rows] if names is not None else None)
            for i, (xyxyn, found_labels, conf) in zip(rows, found, strict=True):
                boxes[i], labels[i], scores[i] = xyxyn.tolist(), found_labels, conf.tolist()
        done = [b is not None for b in boxes]
        p = self.params.prefix
        batch = with_status(batch, status, errors)
        batch = batch.append_column(f"{p}_boxes", pa.array(boxes, BOX_TYPE))
        batch = batch.append_column(f"{p}_labels", pa.array(labels, LABEL_TYPE))
        batch = batch.append_column(f"{p}_scores", pa.array(scores, SCORE_TYPE))
        model = [self.params.weights if ok else None for ok in done]
        return batch.append_column(f"{p}_model", pa.array(model, pa.string()))
