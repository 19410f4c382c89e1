"""Train ``curate-tiny-yolo-world``, an open-vocabulary ultralytics YOLO-World (v2, n scale) of the
shapes world, on CPU, with class prompts from the committed tiny CLIP's text tower.

Classes are colour + kind phrases ("red circle"): 10 colours x 8 kinds = 80. One colour per kind is
held out (``HELD_OUT``): its phrase is never a prompt in training and no training image contains it,
so the evaluation can tell names seen in training from names the detector meets only through the
text encoder. The prompts are the tiny CLIP's embeddings of the phrases, zero-padded to 512
(``captioners.open_vocab``), the same vectors the ``detect`` step builds at inference; ultralytics'
``WorldTrainer`` would fetch CLIP ViT-B/32 instead, so ``TinyClipWorldTrainer`` overrides the two
places that encode names.

Evaluation (unseen seed): the real ``detect`` step is given each image's own ground-truth phrases
(``classes_column``), and its boxes are matched at IoU 0.5 with labels that must agree, separately
for seen and held-out phrases; then again with two absent phrases added per image (distractors), to
count what it finds that is not there.

    python scripts/train_tiny_yolo_world.py     # about 20 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_yolo import data_yaml, fit, generate_pool, write_split  # noqa: E402

logger = logging.getLogger("train_tiny_yolo_world")


def phrases() -> list[str]:
    from curate.synth import COLORS, SHAPES

    return [f"{color} {kind}" for kind in SHAPES for color in COLORS]


def held_out() -> list[str]:
    """One colour per kind, a different one each time (kind i: colour 3i+1 mod 10)."""
    from curate.synth import COLORS, SHAPES

    colors = list(COLORS)
    return [f"{colors[(3 * i + 1) % len(colors)]} {kind}" for i, kind in enumerate(SHAPES)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from captioners.detector import TINY_WORLD_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TINY_WORLD_DIR, help="folder for the weights and the card")
    p.add_argument("--work", type=Path, default=Path("/tmp/curate-tiny-yolo-world"), help="pools, data, runs")
    p.add_argument("--samples", type=int, default=800, help="pool size (images with a held-out phrase are dropped)")
    p.add_argument("--seed", type=int, default=4322, help="training pool seed (tests use 0-20)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.002, help="AdamW learning rate")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    p.add_argument("--val-samples", type=int, default=100, help="ultralytics' own end-of-training validation")
    p.add_argument("--eval-samples", type=int, default=300)
    p.add_argument("--eval-seed", type=int, default=98, help="unseen seed for the evaluation pool")
    p.add_argument("--confidence", type=float, default=0.1, help="the detect step's confidence in the evaluation")
    p.add_argument("--eval-only", action="store_true", help="evaluate the weights in --out again (timings from --work)")
    return p.parse_args(argv)


def tiny_clip_prompts():
    from captioners.open_vocab import PromptEncoder
    from curate.models import TINY_CLIP_NAME
    from filters.clip_embed import ClipEmbedder, ClipEmbedParams

    return PromptEncoder(ClipEmbedder(ClipEmbedParams(model=TINY_CLIP_NAME, device="cpu")))


def make_trainer_class():
    """A WorldTrainer whose class names are encoded by the tiny CLIP (as the detect step encodes them)."""
    import torch
    from ultralytics.models.yolo.world import train as world_train

    encode = tiny_clip_prompts()

    def set_ema_prompts(trainer) -> None:
        # Replaces world_train.on_pretrain_routine_end, which calls set_classes (a CLIP download).
        names = [n.split("/", 1)[0] for n in trainer.test_loader.dataset.data["names"].values()]
        ema = trainer.ema.ema
        ema.txt_feats = torch.from_numpy(encode(names))[None].to(next(ema.parameters()).device)
        ema.model[-1].nc = len(names)

    class TinyClipWorldTrainer(world_train.WorldTrainer):
        def generate_text_embeddings(self, texts: list[str], batch: int, cache_dir: Path) -> dict:
            return {t: torch.from_numpy(v) for t, v in zip(texts, encode(texts), strict=True)}

        def get_model(self, cfg=None, weights=None, verbose=True):
            model = super().get_model(cfg, weights, verbose)
            hooks = self.callbacks["on_pretrain_routine_end"]
            hooks[:] = [h for h in hooks if h is not world_train.on_pretrain_routine_end]
            if set_ema_prompts not in hooks:
                hooks.append(set_ema_prompts)
            return model

    return TinyClipWorldTrainer


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    args = parse_args(argv)

    import torch

    from captioners.detector import TINY_WORLD_NAME, _ultralytics
    from curate.synth.scoring import shape_phrase

    ultralytics = _ultralytics()
    torch.set_num_threads(args.threads)
    hidden = set(held_out())
    seen = [p for p in phrases() if p not in hidden]
    timings: dict[str, float] = {}
    data_root = args.work / "data"

    def only_seen(meta: dict) -> bool:
        return not any(shape_phrase(s) in hidden for s in meta["gt"]["shapes"])

    t0 = time.perf_counter()
    train_pool = generate_pool(args.work / f"train-s{args.seed}-n{args.samples}", args.samples, args.seed)
    val_pool = generate_pool(args.work / f"val-s{args.seed + 1}-n{args.val_samples}", args.val_samples, args.seed + 1)
    eval_pool = generate_pool(
        args.work / f"eval-s{args.eval_seed}-n{args.eval_samples}", args.eval_samples, args.eval_seed
    )
    timings["generate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_train = write_split(train_pool, data_root, "train", seen, args.imgsz, shape_phrase, only_seen)
    n_val = write_split(val_pool, data_root, "val", seen, args.imgsz, shape_phrase, only_seen)
    timings["decode"] = time.perf_counter() - t0
    logger.info("wrote %d training and %d validation images in %.0f s", n_train, n_val, timings["decode"])

    weights = args.out / f"{TINY_WORLD_NAME}.pt"
    recorded = args.work / "timings.json"
    if args.eval_only:
        timings.update(
            {k: v for k, v in json.loads(recorded.read_text()).items() if k in ("generate", "decode", "train")}
        )
    else:
        train(ultralytics, args, data_root, seen, weights)
        timings["train"] = time.perf_counter() - t0 - timings["decode"]
        recorded.write_text(json.dumps(timings))
    t0 = time.perf_counter()
    metrics = evaluate(eval_pool, hidden, weights, args.confidence)
    timings["eval"] = time.perf_counter() - t0
    timings["total"] = sum(timings[k] for k in ("generate", "decode", "train", "eval"))
    logger.info("evaluation: %s", json.dumps(metrics))
    n_params = sum(p.numel() for p in ultralytics.YOLO(str(weights)).model.parameters())
    (args.out / "MODEL_CARD.md").write_text(
        render_card(args, sorted(hidden), n_params, weights, n_train, metrics, timings)
    )
    logger.info("wrote %s and MODEL_CARD.md in %.0f s", weights, timings["total"])


def train(ultralytics: Any, args: argparse.Namespace, data_root: Path, seen: list[str], weights: Path) -> None:
    model = ultralytics.YOLO("yolov8n-worldv2.yaml")
    # nbs equal to the batch: no gradient accumulation (see curate-tiny-yolo's card)
    fit(model, data_yaml(data_root, seen, "val"), args, nbs=args.batch_size, trainer=make_trainer_class())
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(model.trainer.last), weights)
    weights.chmod(0o644)


def evaluate(pool: Path, hidden: set[str], weights: Path, confidence: float, distractors: int = 2) -> dict[str, Any]:
    """The detect step on the pool, given each image's phrases (and then absent ones too)."""
    import numpy as np
    import pyarrow as pa

    import captioners.detector  # noqa: F401 - registers the step
    from curate.readers.base import list_shards, read_shard
    from curate.steps import StepRunner
    from curate.synth.scoring import match_at_iou, pool_truth, shape_phrase, totals

    truth = pool_truth(pool, shape_phrase)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(pool))])
    table = table.filter(pa.compute.is_in(table["uid"], pa.array(sorted(truth))))
    rng = np.random.default_rng(0)
    everything = phrases()
    asked, with_absent = [], []
    for uid in table["uid"].to_pylist():
        present = list(dict.fromkeys(label for label, _ in truth[uid]))
        absent = [p for p in everything if p not in present]
        asked.append(present)
        with_absent.append(present + [absent[int(k)] for k in rng.choice(len(absent), distractors, replace=False)])
    step = StepRunner(
        "detect",
        "detect",
        {"weights": str(weights), "classes_column": "names", "device": "cpu", "confidence": confidence},
    )
    out: dict[str, Any] = {
        "images": table.num_rows,
        "iou": 0.5,
        "confidence": confidence,
        "distractors_per_image": distractors,
    }
    for name, lists in (("own_phrases", asked), ("with_distractors", with_absent)):
        result = step(table.append_column("names", pa.array(lists, pa.list_(pa.string()))))
        predicted = {
            uid: (b, lab, s)
            for uid, b, lab, s in zip(
                result["uid"].to_pylist(),
                result["det_boxes"].to_pylist(),
                result["det_labels"].to_pylist(),
                result["det_scores"].to_pylist(),
                strict=True,
            )
        }
        counts = match_at_iou(predicted, truth)
        seen_names = {k for k in counts if k not in hidden}
        out[name] = {
            "all": totals(counts),
            "seen": totals(counts, seen_names),
            "held_out": totals(counts, hidden),
            "boxes_on_absent_names": sum(
                lab not in {t for t, _ in truth[uid]} for uid, (_, labels, _) in predicted.items() for lab in labels
            ),
        }
    return out


def render_card(
    args: argparse.Namespace,
    hidden: list[str],
    n_params: int,
    weights: Path,
    n_train: int,
    metrics: dict,
    timings: dict[str, float],
) -> str:
    import platform

    import torch
    import ultralytics

    from captioners.detector import TINY_WORLD_NAME

    command = shlex.join(
        ["python", "scripts/train_tiny_yolo_world.py", *(a for a in sys.argv[1:] if a != "--eval-only")]
    )
    size_mb = weights.stat().st_size / 1e6

    def row(name: str, label: str) -> str:
        m = metrics[name]
        return (
            f"| {label} | {m['seen'][1]:.3f} | {m['seen'][0]:.3f} | {m['held_out'][1]:.3f} | "
            f"{m['held_out'][0]:.3f} | {m['boxes_on_absent_names']} |"
        )

    return f"""# {TINY_WORLD_NAME}

An ultralytics YOLO-World v2 detector (`yolov8n-worldv2.yaml`, random initialisation) trained from
scratch on the synthetic "shapes world" of `curate.synth`, with class prompts from the committed
tiny CLIP's text tower. It exists so that the open-vocabulary path of the `detect` step (names per
image, `classes` / `classes_column`) runs for real, offline, and is measured. **It knows nothing but
coloured shapes on textured backgrounds.**

## Model

- `{weights.name}`: ultralytics checkpoint ({size_mb:.1f} MB, {n_params / 1e6:.2f}M parameters), a
  `WorldModel`, trained at {args.imgsz} px.
- Prompts: `curate-tiny-clip`'s text embedding (128 wide) of the bare phrase (template `{{}}`),
  L2-normalised and zero-padded to 512 (`captioners.open_vocab.project_prompts`). The `detect` step's
  defaults (`text_model: curate-tiny-clip`, `prompt_template: "{{}}"`) are this encoder.
- Loaded by the `detect` step as `weights: {TINY_WORLD_NAME}`.

## Training data

`make_pool(dir, samples={args.samples}, seed={args.seed}, faults=FaultRates.none())`; classes are the
72 colour + kind phrases other than the 8 held out ({", ".join(hidden)}): images containing a
held-out phrase are dropped, leaving {n_train}. Images are decoded as the step decodes them
(`decode_for_detection`), boxes from `gt.shapes`. Seed {args.seed} is outside the tests' 0-20.

## Training

- Command: `{command}` (CPU, {args.threads} threads, machine shared with other work)
- `YOLO("yolov8n-worldv2.yaml").train(trainer=TinyClipWorldTrainer, imgsz={args.imgsz},
  epochs={args.epochs}, batch={args.batch_size}, nbs={args.batch_size}, optimizer="AdamW",
  lr0={args.lr}, device="cpu", plots=False, workers=0, amp=False, val=False, seed=0,
  deterministic=True)`; each image's prompts are its own phrases plus sampled negatives from the 72
  (ultralytics' `RandomLoadText`).
- Wall time: {timings["total"]:.0f} s in all = pool generation {timings["generate"]:.0f} s + decoding
  {timings["decode"]:.0f} s + training {timings["train"]:.0f} s + evaluation {timings["eval"]:.0f} s
  ({platform.machine()}, torch {torch.__version__}, ultralytics {ultralytics.__version__}).

## Evaluation on an unseen seed

`make_pool(..., samples={args.eval_samples}, seed={args.eval_seed})`, all {metrics["images"]} images (held-out
phrases included), through the `detect` step (`classes_column`, confidence {metrics["confidence"]}): a box counts when
its label is the ground-truth shape's phrase and IoU >= 0.5.

| names given | recall, seen | precision, seen | recall, held out | precision, held out | boxes on absent names |
|---|---|---|---|---|---|
{row("own_phrases", "its own phrases")}
{row("with_distractors", f"its own + {metrics['distractors_per_image']} absent phrases")}

## Limitations

- The held-out column is the honest open-vocabulary figure: a phrase never seen in training is found
  only as well as the tiny CLIP's text tower composes colour and kind.
- Only the synthetic shapes world. For real data give real YOLO-World weights with the encoder they
  were trained with: `weights: /path/yolov8s-worldv2.pt, text_model: ViT-B-32, text_pretrained: openai`.
"""


if __name__ == "__main__":
    main()
