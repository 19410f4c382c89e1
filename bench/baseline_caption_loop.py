"""Baselines for bench_caption, with nothing written: (1) the same model's bare batched ``generate``
over the pool's images with the same prompt, batch and token limit; (2) a bare ``AsyncOpenAI`` loop
at the same concurrency against the same server. Both read the shards with webdataset."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time

from _pool import decoded_samples
from PIL import Image

from captioners.hints import Hints, PromptTemplate


def load(pattern: str, size: int) -> list[tuple[Image.Image, str]]:
    out = []
    for sample, img in decoded_samples(pattern):
        if img is None:  # the step fails these rows; the loop skips them
            continue
        img.thumbnail((size, size))
        out.append((img, sample.get("txt", b"").decode()))
    return out


def prompt_of(caption: str) -> str:
    return PromptTemplate.load("dense_caption").render(Hints(alt_text=caption).lines(("alt_text",)))


def run_generate(items, args) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(args.threads)
    processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(args.model, local_files_only=True).eval()
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_of(c)}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for _, c in chunk
        ]
        inputs = processor(images=[i for i, _ in chunk], text=texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=args.max_tokens, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)  # fmt: skip
        tokens += int((out[:, inputs["input_ids"].shape[1] :] != processor.tokenizer.pad_token_id).sum())
    return {"captions": len(items), "generate_seconds": time.perf_counter() - t0, "tokens": tokens}


def run_openai(items, args) -> dict:
    import base64

    import openai

    async def main() -> int:
        client = openai.AsyncOpenAI(base_url=args.base_url, api_key="EMPTY", timeout=60, max_retries=2)
        gate = asyncio.Semaphore(args.concurrency)

        async def one(img: Image.Image, caption: str) -> int:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt_of(caption)}]
            async with gate:
                r = await client.chat.completions.create(
                    model=args.model, messages=[{"role": "user", "content": content}],
                    max_tokens=args.max_tokens, temperature=0.0,
                )  # fmt: skip
            return 1 if r.choices and r.choices[0].message.content else 0

        return sum(await asyncio.gather(*(one(i, c) for i, c in items)))

    t0 = time.perf_counter()
    answered = asyncio.run(main())
    return {"captions": answered, "generate_seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["generate", "openai"], default="generate")
    ap.add_argument("--base-url")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    items = load(args.input, args.image_size)
    result = run_generate(items, args) if args.mode == "generate" else run_openai(items, args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
