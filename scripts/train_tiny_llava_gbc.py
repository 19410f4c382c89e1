"""Train ``curate-tiny-llava-gbc``: ``curate-tiny-llava`` fine-tuned to answer the four queries of
graph-based captioning (``captioners/prompts/gbc_*.txt``) on the synthetic shapes world, so that the
``gbc_caption`` step runs for real offline and its graphs can be scored against ground truth.

Training pairs, all from the ground truth (``curate.synth.gbc_truth``), on a shapes pool where each
shape after a scene's first repeats its colour and kind at ``--repeat-rate`` (so that groups, and
compositions, are common):

- image query (the whole image, hints from the real experts as the dense captioner has them, each kind
  present on a random half): detailed caption, ``- [element][single|multiple]`` lines, concise caption;
- entity query on each shape's crop (its true box, jittered as a detector's would be): present, a
  description, no parts; and on a random half of the images one crop asked about a phrase that is not
  in the scene: ``Object Present: No``;
- relation query (whole image, hints: where each pair of elements is, from their boxes): bracketed
  sentences;
- composition query for each group of several shapes (the crop with numbered boxes and the spanning
  tree hints): a composition line and a general description.

The evaluation (``--eval-only`` runs it alone) builds graphs of an unseen seed with the ``gbc_caption``
step and scores them (``curate.synth.gbc_truth.score_graph``); it writes ``MODEL_CARD.md``.

    python scripts/train_tiny_llava_gbc.py      # about 40 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_tiny_llava as base  # noqa: E402 - the script folder is not a package

logger = logging.getLogger("train_tiny_llava_gbc")
MAX_RELATIONS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from captioners.backends.transformers_backend import TINY_LLAVA_DIR, TINY_LLAVA_GBC_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=TINY_LLAVA_DIR, help="the model fine-tuned")
    p.add_argument("--out", type=Path, default=TINY_LLAVA_GBC_DIR)
    p.add_argument("--work", type=Path, default=Path("/tmp/curate-tiny-llava"))
    p.add_argument("--samples", type=int, default=900)
    p.add_argument("--seed", type=int, default=4341, help="training pool seed (tests use 0-20)")
    p.add_argument("--text-rate", type=float, default=0.3)
    p.add_argument("--alt-fault-rate", type=float, default=0.45)
    p.add_argument("--repeat-rate", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=60)
    p.add_argument("--eval-seed", type=int, default=98)
    p.add_argument(
        "--relation-boost",
        type=int,
        default=1,
        help="relation examples per image with 2+ elements, each in a new order",
    )
    p.add_argument("--other-share", type=float, default=1.0, help="share of the other examples kept")
    p.add_argument("--eval-only", action="store_true", help="evaluate the model in --out again")
    return p.parse_args(argv)


def load_pool(folder: Path, samples: int, seed: int, args: argparse.Namespace):
    """(table of successful samples with images, {uid: sample json}); the pool is made if missing."""
    from curate.synth import make_pool

    if not any(folder.glob("*.tar")):
        make_pool(
            str(folder),
            samples=samples,
            shard_size=1000,
            seed=seed,
            faults=base.alt_faults(args.alt_fault_rate),
            text_rate=args.text_rate,
            repeat_rate=args.repeat_rate,
        )
    return base.load_pool(folder, samples, seed, args.text_rate, args.alt_fault_rate)


def _jitter(box: tuple, rng: random.Random, amount: float = 0.05) -> tuple:
    w, h = box[2] - box[0], box[3] - box[1]
    return tuple(v + rng.uniform(-amount, amount) * (w if k % 2 == 0 else h) for k, v in enumerate(box))


def examples_of(image, meta: dict, found: dict, rng: random.Random, relation_boost: int = 1) -> list[tuple]:
    """(image, prompt, answer) of the four query kinds for one training image; ``relation_boost``
    relation examples, the elements in a new random order in each after the first (so the model
    learns to copy the names it is given, whatever their order)."""
    from captioners.gbc_geometry import composition_hints, composition_view, entity_view, relation_hints, relation_pairs
    from captioners.gbc_prompts import GBC_PROMPTS
    from captioners.hints import HINT_KINDS
    from curate.synth import gbc_truth as truth
    from curate.synth.vocab import COLORS, SHAPES

    prompts = GBC_PROMPTS
    kinds = tuple(k for k in HINT_KINDS if rng.random() < 0.5)
    out = [(image, prompts["image"].render(base.hints_of(found, kinds)), truth.image_answer(meta))]
    shapes = meta["gt"]["shapes"]
    for shape in rng.sample(shapes, min(3, len(shapes))):
        crop, _ = entity_view(image, _jitter(tuple(shape["bbox"]), rng))
        prompt = prompts["entity"].render([], entity=truth.phrase_of(shape))
        out.append((crop, prompt, truth.entity_answer(meta, shape)))
    if rng.random() < 0.5:
        present = {truth.phrase_of(s) for s in shapes}
        absent = [f"{c} {k}" for c in COLORS for k in SHAPES if f"{c} {k}" not in present]
        crop, _ = entity_view(image, _jitter(tuple(rng.choice(shapes)["bbox"]), rng))
        out.append((crop, prompts["entity"].render([], entity=rng.choice(absent)), truth.ABSENT_ANSWER))
    groups = truth.groups(meta)
    for k in range(relation_boost if len(groups) >= 2 else 0):
        order = groups if k == 0 else rng.sample(groups, len(groups))
        pairs = relation_pairs([(g.text, g.box, g.multiple) for g in order], MAX_RELATIONS)
        prompt = prompts["relation"].render(
            relation_hints(pairs), count=str(MAX_RELATIONS), elements=", ".join(f"[{g.text}]" for g in order)
        )
        out.append((image, prompt, truth.relation_answer(pairs)))
    for g in groups:
        if g.multiple:
            view, _ = composition_view(image, g.boxes)
            hints = composition_hints([f"{g.phrase} {k + 1}" for k in range(len(g.boxes))], g.boxes)
            out.append((view, prompts["composition"].render(hints, entity=g.text), truth.composition_answer(g)))
    return out


def fine_tune(args: argparse.Namespace, table, metas: dict, found: dict) -> dict:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from filters.clip_embed import decode_image

    timings: dict = {}
    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.base)
    model = LlavaForConditionalGeneration.from_pretrained(args.base, dtype=torch.float32)
    rng = random.Random(1)
    triples = []
    for uid, data in zip(table["uid"].to_pylist(), table["image"].to_pylist(), strict=True):
        made = examples_of(decode_image(data, 512), metas[uid], found[uid], rng, args.relation_boost)
        triples += [t for t in made if t[1].startswith("Name at") or rng.random() < args.other_share]
    kinds: dict[str, int] = {}
    for _, prompt, _ in triples:
        key = " ".join(prompt.split()[:2])
        kinds[key] = kinds.get(key, 0) + 1
    logger.info("%d examples (%s)", len(triples), kinds)
    examples = [base.encode_example(processor, i, p, a) for i, p, a in triples]
    timings["encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = base.train(model, examples, processor.tokenizer.pad_token_id, args)
    timings["train"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    return {**timings, "losses": losses, "examples": len(examples), "kinds": kinds}


def training_command() -> str:
    return shlex.join(["python", "scripts/train_tiny_llava_gbc.py", *(a for a in sys.argv[1:] if a != "--eval-only")])


def evaluate(args: argparse.Namespace, table, metas: dict) -> dict:
    """Graphs of the evaluation pool from the ``gbc_caption`` step, scored against the truth."""
    import pyarrow as pa

    import captioners.detector  # noqa: F401 - registers the steps
    import captioners.gbc  # noqa: F401
    import captioners.ocr  # noqa: F401
    import captioners.tags  # noqa: F401
    from curate.steps import StepRunner
    from curate.synth.gbc_truth import score_graph, summarise

    out = table
    for name, params in base.EXPERT_STEPS.items():
        out = StepRunner(name, name, params)(out)
    t0 = time.perf_counter()
    step = StepRunner("gbc_caption", "gbc_caption", gbc_params(args.out))
    out = step(out)
    seconds = time.perf_counter() - t0
    graphs = out["gbc_graph"].to_pylist()
    counts = [score_graph(json.loads(g), metas[u]) for g, u in zip(graphs, out["uid"].to_pylist(), strict=True) if g]
    calls = pa.compute.sum(out["gbc_calls"]).as_py()
    return {
        **summarise(counts),
        "images": out.num_rows,
        "graphs": len(counts),
        "seconds": seconds,
        "calls": calls,
        "vertices": sum(len(json.loads(g)["vertices"]) for g in graphs if g),
    }


def gbc_params(model_dir: Path) -> dict:
    """The evaluation's (and the gbc_recaption recipe's) gbc_caption params for the tiny models."""
    return {
        "backend": {"kind": "transformers", "model": str(model_dir), "device": "cpu"},
        "detector": {"weights": "curate-tiny-yolo-world", "device": "cpu"},
        "selection": {"min_score": 0.1, "min_area_px": 300},  # the shapes world's calibration (the recipe's)
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    base.logger.setLevel(logging.INFO)  # its train() logs each epoch's loss
    args = parse_args(argv)
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    tag = f"alt{args.alt_fault_rate:g}-rep{args.repeat_rate:g}"
    t0 = time.perf_counter()
    train_table, train_metas = load_pool(args.work / f"gbc-train-s{args.seed}-{tag}", args.samples, args.seed, args)
    eval_table, eval_metas = load_pool(
        args.work / f"gbc-eval-s{args.eval_seed}-{tag}", args.eval_samples, args.eval_seed, args
    )
    pools = time.perf_counter() - t0
    recorded = args.out / "training_history.json"  # one entry per training run, in order
    if not args.eval_only:
        continuing = args.base.resolve() == args.out.resolve()
        history = json.loads(recorded.read_text()) if continuing and recorded.is_file() else []
        t0 = time.perf_counter()
        found = base.expert_hints(train_table, args.work / f"gbc-experts-s{args.seed}-{tag}.json")
        experts = time.perf_counter() - t0
        run = fine_tune(args, train_table, train_metas, found)
        keys = ("epochs", "lr", "relation_boost", "other_share", "samples", "seed")
        history.append(
            {
                "command": training_command(),
                "base": "curate-tiny-llava" if not continuing else "curate-tiny-llava-gbc (the run before)",
                **{k: getattr(args, k) for k in keys},
                "pools": pools,
                "experts": experts,
                **run,
            }
        )
        recorded.write_text(json.dumps(history, indent=1))
    history = json.loads(recorded.read_text())
    timings: dict = {}
    t0 = time.perf_counter()
    metrics = evaluate(args, eval_table, eval_metas)
    timings["eval"] = time.perf_counter() - t0
    logger.info("evaluation: %s", json.dumps(metrics))
    (args.out / "MODEL_CARD.md").write_text(render_card(args, metrics, timings, history))


def _run_line(k: int, h: dict) -> str:
    """One training run of the card's list."""
    query = {"Describe this": "image", "Look at": "entity", "Describe the": "composition", "Name at": "relation"}
    kinds = ", ".join(f"{v} {query.get(n, n)}" for n, v in h["kinds"].items())
    losses = ", ".join(f"{v:.3f}" for v in h["losses"])
    experts = "cached from an earlier run" if h["experts"] < 1 else f"{h['experts']:.0f} s"
    return (
        f"{k + 1}. `{h['command']}` from {h['base']}: {h['examples']} examples ({kinds}), relation examples "
        f"per image {h['relation_boost']}, other examples kept {h['other_share']:.0%}; AdamW lr {h['lr']}, "
        f"{h['epochs']} epochs, mean loss per epoch {losses}; wall time: experts {experts}, encoding "
        f"{h['encode']:.0f} s, training {h['train']:.0f} s."
    )


def render_card(args: argparse.Namespace, metrics: dict, timings: dict, history: list[dict]) -> str:
    import platform

    import transformers

    size_mb = sum(f.stat().st_size for f in args.out.glob("*.safetensors")) / 1e6
    runs = "\n".join(_run_line(k, h) for k, h in enumerate(history))

    def f(key: str) -> str:
        value = metrics.get(key)
        return "-" if value is None else f"{value:.3f}"

    m = metrics
    rows = "\n".join(
        f"| {name} | {f(key + '_precision')} | {f(key + '_recall')} | {counts} |"
        for name, key, counts in (
            (
                "entities (IoU >= 0.5 with a true shape, its colour + kind in the node's texts)",
                "entity",
                f"{m['entities']} nodes, {m['shapes']} shapes",
            ),
            (
                "relations (direction agrees with the true relation of the pair)",
                "relation",
                f"{m['relations']} captions, {m['pairs']} pairs",
            ),
            (
                "compositions (a true group of that phrase with as many shapes)",
                "composition",
                f"{m['compositions']} nodes, {m['groups']} groups",
            ),
        )
    )

    return f"""# curate-tiny-llava-gbc

`curate-tiny-llava` (see its card: a 4-layer Llama behind a 3-layer CLIP ViT at 96 px) fine-tuned to
answer the four graph-based captioning queries of `captioners/prompts/gbc_*.txt` on the synthetic
shapes world. **It knows nothing but coloured shapes.** {size_mb:.1f} MB of weights; loads and serves as
its base does.

## Training

- Pool: `make_pool(samples={args.samples}, seed={args.seed}, text_rate={args.text_rate},
  repeat_rate={args.repeat_rate})` with web-like alt-text on {args.alt_fault_rate:.0%} of the samples.
- Examples from the ground truth (`curate.synth.gbc_truth`). Image queries carry the real experts'
  hints (each kind on a random half), entity queries the shape's jittered true box as crop (and, on
  half of the images, a phrase not in the scene: "Object Present: No"), relation queries the
  pairwise directions of the elements' boxes as hints, composition queries the numbered boxes and
  spanning-tree hints. Batch {args.batch_size}, cosine schedule with 5% warm-up, loss on the answer only.
- Runs, in order (run them in this order to reproduce the weights):

{runs}

  ({platform.machine()}, {args.threads} threads, transformers {transformers.__version__}; evaluation
  {timings["eval"]:.0f} s.)

## Graphs it builds, on an unseen seed

`make_pool(samples={args.eval_samples}, seed={args.eval_seed})` with the same options, {metrics["images"]}
images, through the `gbc_caption` step (the committed tiny YOLO-World finds each phrase; box selection
as the `gbc_recaption` recipe calibrates it, `min_score` 0.1, `min_area_px` 300; other params default):
{metrics["graphs"]} graphs, {metrics["vertices"]} vertices, {metrics["calls"]} MLLM requests,
{metrics["seconds"]:.0f} s.
Scored by `curate.synth.gbc_truth.score_graph`:

| nodes | precision | recall | counts |
|---|---|---|---|
{rows}

## Limitations

- The shapes world only. Shapes have no parts, so entity queries always answer no prominent features
  and graphs are two levels deep.
- The image query is the weak step. Like its base, the model binds colours to kinds poorly from
  its own vision and the experts' hints (kinds with boxes, colours as tags), so it often names one
  phrase for different shapes ("two yellow hexagons" for a yellow circle and an orange hexagon).
  The detector then finds only what was named, and phrases naming the same thing are merged, so
  few images get two child groups: relation queries are rare (the relation recall above).
- Relations are read from the boxes' geometry, given as hints: the model's part is to name the pair
  and keep the direction; its own vision adds nothing there.
- Entity captions name the background of the crop, which the model often gets wrong.
"""


if __name__ == "__main__":
    main()
