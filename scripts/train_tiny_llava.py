"""Train ``curate-tiny-llava``, a LLaVA-style MLLM of the synthetic shapes world, on CPU, with
transformers (``LlavaForConditionalGeneration``: a small CLIP ViT, a projector, a few Llama layers,
a byte-level BPE tokenizer trained on the shapes world's words, a chat template).

Training pairs: a shapes pool (signs with words on 30% of the scenes; alt-text as the web has it on
``--alt-fault-rate`` of the samples: naming only the largest shape, a vague phrase or a file name)
-> the ground truth's dense description and short caption (``curate.synth.describe``) as
``Description: ...`` / ``Caption: ...``.
The prompt is ``captioners/prompts/dense_caption.txt`` with hints built by ``captioners.hints`` from
the real experts' output on each image (the committed tiny YOLO's boxes, RapidOCR's words, the tiny
CLIP's tags) and the alt-text, each hint kind present on a random half of the samples, so the model
learns both to use imperfect hints and to look for itself.

Evaluation on an unseen seed with the same alt-text faults: the model's descriptions scored by which
colour + kind phrases they name against the ground truth (recall, precision), with all hints, with
the experts' only, with the alt-text alone and with none; and whether the sign's word reaches the
description; on every sample and on the samples whose alt-text is faulty, beside the alt-text's own
recall there (what the dense captions add over the alt-text). Writes the model folder
(``save_pretrained``) and ``MODEL_CARD.md``.

    python scripts/train_tiny_llava.py      # about 40 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("train_tiny_llava")

SPECIALS = ["<pad>", "<s>", "<|end|>", "<image>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>\n"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)
EXPERT_STEPS = {
    "detect": {"device": "cpu"},
    "ocr": {"latin_only": True, "threads": 2, "det_limit_side_len": 512},
    "tags": {"model": "curate-tiny-clip", "pretrained": "curate", "vocabulary": "shapes_tags.txt", "top_k": 3},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from captioners.backends.transformers_backend import TINY_LLAVA_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TINY_LLAVA_DIR)
    p.add_argument("--work", type=Path, default=Path("/tmp/curate-tiny-llava"))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=4340, help="training pool seed (tests use 0-20)")
    p.add_argument("--text-rate", type=float, default=0.3)
    p.add_argument("--alt-fault-rate", type=float, default=0.45, help="share of samples with web-like alt-text")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=1200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=120)
    p.add_argument("--eval-seed", type=int, default=97)
    p.add_argument("--eval-only", action="store_true", help="evaluate the model in --out again")
    return p.parse_args(argv)


# -- data ---------------------------------------------------------------------------------------------


def alt_faults(rate: float):
    """No faults but the alt-text ones, a third of ``rate`` each (the images do not depend on them)."""
    from dataclasses import replace

    from curate.synth import FaultRates

    third = rate / 3
    return replace(FaultRates.none(), alt_largest_only=third, alt_vague=third, alt_filename=third)


def load_pool(folder: Path, samples: int, seed: int, text_rate: float, alt_rate: float):
    """(table of successful samples with images, {uid: sample json}); the pool is made if missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.readers.base import list_shards, read_shard
    from curate.synth import make_pool
    from curate.synth.scoring import pool_metas

    if not any(folder.glob("*.tar")):
        faults = alt_faults(alt_rate)
        make_pool(str(folder), samples=samples, shard_size=1000, seed=seed, faults=faults, text_rate=text_rate)
    metas = pool_metas(folder)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])
    table = table.filter(pc.equal(table["status"], "success"))
    return table.filter(pc.is_in(table["uid"], pa.array(sorted(metas)))), metas


def expert_hints(table, cache: Path) -> dict[str, dict]:
    """uid -> the experts' findings (detect, ocr, tags steps run in-process) and the alt-text, cached
    as json (the experts see only images, which the alt-text faults leave as they are)."""
    if cache.is_file():
        found = json.loads(cache.read_text())
        for uid, caption in zip(table["uid"].to_pylist(), table["caption"].to_pylist(), strict=True):
            found[uid]["caption"] = caption
        return found
    import captioners.detector  # noqa: F401 - registers the steps
    import captioners.ocr  # noqa: F401
    import captioners.tags  # noqa: F401
    from curate.steps import StepRunner

    out = table
    for name, params in EXPERT_STEPS.items():
        t0 = time.perf_counter()
        out = StepRunner(name, name, params)(out)
        logger.info("%s on %d images in %.0f s", name, out.num_rows, time.perf_counter() - t0)
    cols = ["uid", "caption", "det_boxes", "det_labels", "ocr_texts", "tags"]
    found = {r["uid"]: r for r in out.select(cols).to_pylist()}
    cache.write_text(json.dumps(found))
    return found


def hints_of(found: dict, kinds: tuple[str, ...]) -> list[str]:
    from captioners.hints import Hints

    hints = Hints(
        boxes=found.get("det_boxes"),
        labels=found.get("det_labels"),
        texts=found.get("ocr_texts"),
        tags=found.get("tags"),
        alt_text=found.get("caption"),
    )
    return hints.lines(kinds)


def answer_of(meta: dict) -> str:
    from curate.synth.describe import dense_description, short_caption

    return f"Description: {dense_description(meta)}\nCaption: {short_caption(meta)}"


def user_message(image: Any, prompt: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}


# -- model --------------------------------------------------------------------------------------------


def build_processor(corpus: list[str], args: argparse.Namespace):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",  # batched generation
        chat_template=CHAT_TEMPLATE,
    )
    image_processor = CLIPImageProcessor(
        do_resize=True,
        size={"height": args.image_size, "width": args.image_size},
        do_center_crop=False,  # the whole scene: descriptions say where shapes are
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=args.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the ViT's CLS, dropped by the "default" strategy
    )


def build_model(processor, args: argparse.Namespace):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(args.image_size // args.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)


def encode_example(processor, image, prompt: str, answer: str) -> dict:
    """input_ids, attention_mask, pixel_values and labels (loss on the answer and its end token only)."""
    prefix = processor.apply_chat_template([user_message(image, prompt)], add_generation_prompt=True, tokenize=False)
    full = processor(images=[image], text=[prefix + answer + "<|end|>"], return_tensors="pt")
    n_prefix = processor(images=[image], text=[prefix], return_tensors="pt")["input_ids"].shape[1]
    labels = full["input_ids"].clone()
    labels[:, :n_prefix] = -100
    return {
        "input_ids": full["input_ids"][0],
        "attention_mask": full["attention_mask"][0],
        "pixel_values": full["pixel_values"][0],
        "labels": labels[0],
    }


def collate(examples: list[dict], pad_id: int) -> dict:
    import torch

    n = max(len(e["input_ids"]) for e in examples)

    def pad(key: str, value: int):
        return torch.stack(
            [torch.cat([e[key], torch.full((n - len(e[key]),), value, dtype=e[key].dtype)]) for e in examples]
        )

    return {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
    }


def train(model, examples: list[dict], pad_id: int, args: argparse.Namespace) -> list[float]:
    import torch

    rng = random.Random(0)
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )
    model.train()
    losses = []
    for epoch in range(args.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        running = 0.0
        for k in range(steps_per_epoch):
            batch = collate([examples[i] for i in order[k * args.batch_size : (k + 1) * args.batch_size]], pad_id)
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach())
        losses.append(running / steps_per_epoch)
        logger.info("epoch %d/%d: loss %.3f", epoch + 1, args.epochs, losses[-1])
    model.eval()
    return losses


# -- evaluation ---------------------------------------------------------------------------------------


def evaluate(model_dir: Path, table, metas: dict, found: dict) -> dict:
    """Descriptions of the evaluation pool through the transformers backend, scored against the truth."""
    from captioners.backends import ChatRequest
    from captioners.backends.transformers_backend import TransformersBackend, TransformersParams
    from captioners.hints import PromptTemplate, parse_answer
    from curate.synth.describe import named_shapes, true_shapes
    from filters.clip_embed import decode_image

    backend = TransformersBackend(TransformersParams(model=str(model_dir), device="cpu", batch_size=16))
    template = PromptTemplate.load("dense_caption")
    uids = table["uid"].to_pylist()
    images = [decode_image(data, 512) for data in table["image"].to_pylist()]
    settings = {
        "all hints": ("detections", "text", "tags", "alt_text"),
        "experts, no alt-text": ("detections", "text", "tags"),
        "alt-text only": ("alt_text",),
        "no hints": (),
    }
    faulty = [metas[u]["gt"]["fault"].startswith("alt_") for u in uids]
    out: dict[str, Any] = {"images": len(uids), "faulty_alt": sum(faulty)}
    truth = [true_shapes(metas[u]) for u in uids]
    for name, kinds in settings.items():
        requests = [
            ChatRequest(messages=[user_message(img, template.render(hints_of(found[u], kinds)))], max_tokens=120)
            for u, img in zip(uids, images, strict=True)
        ]
        t0 = time.perf_counter()
        answers = backend.generate(requests)
        seconds = time.perf_counter() - t0
        said, words, signs, parsed = [], 0, 0, 0
        for u, a in zip(uids, answers, strict=True):
            description, caption = parse_answer(a.text or "")
            parsed += description is not None and caption is not None
            said.append(named_shapes(description))
            word = (metas[u]["gt"].get("text") or {}).get("word")
            if word:
                signs += 1
                words += word in (description or "")
        out[name] = {
            **_scores(said, truth),
            "faulty_alt": _scores(*_subset(said, truth, faulty)),
            "word_recall": words / signs if signs else None,
            "parsed": parsed / len(uids),
            "seconds": seconds,
        }
        logger.info("%s: %s", name, out[name])
    alt = [named_shapes(found[u]["caption"]) for u in uids]
    out["alt-text itself"] = {**_scores(alt, truth), "faulty_alt": _scores(*_subset(alt, truth, faulty))}
    return out


def _scores(said: list[set], truth: list[set]) -> dict[str, float]:
    tp = sum(len(s & t) for s, t in zip(said, truth, strict=True))
    return {"recall": tp / max(1, sum(map(len, truth))), "precision": tp / max(1, sum(map(len, said)))}


def _subset(said: list[set], truth: list[set], mask: list[bool]) -> tuple[list[set], list[set]]:
    return [s for s, m in zip(said, mask, strict=True) if m], [t for t, m in zip(truth, mask, strict=True) if m]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = parse_args(argv)
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    alt = f"alt{args.alt_fault_rate:g}"
    train_table, train_metas = load_pool(
        args.work / f"train-s{args.seed}-{alt}", args.samples, args.seed, args.text_rate, args.alt_fault_rate
    )
    eval_table, eval_metas = load_pool(
        args.work / f"eval-s{args.eval_seed}-{alt}",
        args.eval_samples,
        args.eval_seed,
        args.text_rate,
        args.alt_fault_rate,
    )
    timings["pools"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_found = expert_hints(train_table, args.work / f"experts-s{args.seed}.json")
    eval_found = expert_hints(eval_table, args.work / f"experts-s{args.eval_seed}.json")
    timings["experts"] = time.perf_counter() - t0
    recorded = args.work / "timings.json"
    if not args.eval_only:
        from captioners.hints import HINT_KINDS, PromptTemplate
        from filters.clip_embed import decode_image

        template = PromptTemplate.load("dense_caption")
        rng = random.Random(1)
        prompts, answers = [], []
        for uid in train_table["uid"].to_pylist():
            kinds = tuple(k for k in HINT_KINDS if rng.random() < 0.5)
            prompts.append(template.render(hints_of(train_found[uid], kinds)))
            answers.append(answer_of(train_metas[uid]))
        t0 = time.perf_counter()
        processor = build_processor(prompts + answers, args)
        model = build_model(processor, args)
        images = [decode_image(data, 512) for data in train_table["image"].to_pylist()]
        examples = [encode_example(processor, i, p, a) for i, p, a in zip(images, prompts, answers, strict=True)]
        timings["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        losses = train(model, examples, processor.tokenizer.pad_token_id, args)
        timings["train"] = time.perf_counter() - t0
        args.out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(args.out)
        processor.save_pretrained(args.out)
        recorded.write_text(json.dumps({**timings, "losses": losses, "examples": len(examples)}))
    saved = json.loads(recorded.read_text())
    timings = {**saved, **{k: v for k, v in timings.items() if k in ("pools", "experts")}}
    t0 = time.perf_counter()
    metrics = evaluate(args.out, eval_table, eval_metas, eval_found)
    timings["eval"] = time.perf_counter() - t0
    logger.info("evaluation: %s", json.dumps(metrics))
    (args.out / "MODEL_CARD.md").write_text(render_card(args, metrics, timings))


def render_card(args: argparse.Namespace, metrics: dict, timings: dict) -> str:
    import platform

    import torch
    import transformers

    from captioners.backends.transformers_backend import TINY_LLAVA_NAME

    size_mb = sum(f.stat().st_size for f in args.out.glob("*.safetensors")) / 1e6
    command = shlex.join(["python", "scripts/train_tiny_llava.py", *(a for a in sys.argv[1:] if a != "--eval-only")])
    rows = []
    for name in ("all hints", "experts, no alt-text", "alt-text only", "no hints", "alt-text itself"):
        m, f = metrics[name], metrics[name]["faulty_alt"]
        word = "-" if m.get("word_recall") is None else f"{m['word_recall']:.3f}"
        parsed = f"{m['parsed']:.3f}" if "parsed" in m else "-"
        label = "(the alt-text itself, no model)" if name == "alt-text itself" else name
        rows.append(
            f"| {label} | {m['recall']:.3f} | {m['precision']:.3f} | {f['recall']:.3f} | {f['precision']:.3f} "
            f"| {word} | {parsed} |"
        )
    table = "\n".join(rows)
    losses = ", ".join(f"{v:.3f}" for v in timings["losses"])
    # The experts' outputs are cached in --work; computed, they take about 8 minutes on 2 cores.
    experts = f"{timings['experts']:.0f} s" if timings["experts"] >= 1 else "cached from an earlier run"
    return f"""# {TINY_LLAVA_NAME}

A LLaVA-style multimodal model (`transformers.LlavaForConditionalGeneration`, random initialisation)
trained on CPU on the synthetic shapes world, so that the dense captioner runs for real offline and
its captions can be measured against ground truth. **It knows nothing but coloured shapes.**

## Model

- Vision: CLIP ViT, {args.image_size} px, patch {args.patch_size} ({(args.image_size // args.patch_size) ** 2} image
  tokens), 3 layers, width 128. Projector: 2-layer MLP (GELU). Language: Llama, 4 layers, width 256,
  tied embeddings. Tokenizer: byte-level BPE ({args.vocab_size} entries) trained on the prompts and
  answers, with a chat template (`<|user|>` / `<|assistant|>` / `<|end|>`). {size_mb:.1f} MB of weights.
- Saved with `save_pretrained` (model and `LlavaProcessor`); loads with
  `LlavaForConditionalGeneration.from_pretrained` / `AutoProcessor.from_pretrained`, and serves with
  `transformers serve`.

## Training

- Pool: `make_pool(samples={args.samples}, seed={args.seed}, text_rate={args.text_rate})`, no faults but
  web-like alt-text on {args.alt_fault_rate:.0%} of the samples (a third each: names only the largest
  shape, a vague phrase, a camera file name), {timings["examples"]} images. Target: `Description:
  <every shape: size, colour, kind, place; the background; the sign's word>` / `Caption: <the
  shapes>` from the ground truth (`curate.synth.describe`).
- Prompt: `captioners/prompts/dense_caption.txt` with hints from the real experts on each image
  (curate-tiny-yolo boxes, RapidOCR words, tiny-CLIP tags over `shapes_tags.txt`) and the alt-text,
  each kind present on a random half of the samples.
- AdamW lr {args.lr}, cosine with 5% warm-up, batch {args.batch_size}, {args.epochs} epochs, loss on the
  answer only. Mean loss per epoch: {losses}.
- Command: `{command}`; wall time: pools {timings["pools"]:.0f} s, experts {experts},
  encoding {timings["encode"]:.0f} s, training {timings["train"]:.0f} s, evaluation {timings["eval"]:.0f} s
  ({platform.machine()}, {args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}).

## What its descriptions say, on an unseen seed

`make_pool(samples={args.eval_samples}, seed={args.eval_seed}, text_rate={args.text_rate})` with the same
alt-text faults, {metrics["images"]} images ({metrics["faulty_alt"]} with faulty alt-text), greedy decoding
through the `transformers` backend, hints from the real experts. Recall: the ground truth's colour +
kind phrases the description names; precision: the named phrases that are in the image; "faulty
alt": the same on the samples whose alt-text is faulty, where the alt-text itself names little; word:
scenes with a sign whose word the description quotes; parsed: answers with both lines.

| hints in the prompt | recall | precision | recall, faulty alt | precision, faulty alt | word | parsed |
|---|---|---|---|---|---|---|
{table}

## Limitations

- The shapes world only; 4 Llama layers cannot describe anything else.
- Clean alt-text names every shape, and the model copies only about half of it; what the dense
  caption adds shows on the samples with faulty alt-text (the "faulty alt" columns), where it names
  about twice the shapes the alt-text does, at lower precision.
- Its own vision has not learnt colours (no hints: recall 0.02); it depends on the experts' hints.
"""


if __name__ == "__main__":
    main()
