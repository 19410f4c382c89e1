"""Benchmark: dense captions (committed curate-tiny-llava, CPU) in a curate run vs the same model's
bare batched ``generate`` on the same images with the same prompt, batch and token limit; and the
openai backend in a curate run vs a bare ``AsyncOpenAI`` loop at the same concurrency, both against
the same ``transformers serve``. Hints: the alt-text only, so that both sides do the same work (the
experts are benchmarked by bench_detect and bench_ocr). Throughput ratios and peak memory.

    python bench/bench_caption.py --samples 400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from bench_basic import ensure_pool  # noqa: E402


def caption_sets(backend: list[str], batch: int, max_tokens: int) -> list[str]:
    return [
        "steps=[]",
        "steps.0.name=dense_caption",
        "steps.0.params.hints=[alt_text]",
        f"steps.0.params.max_tokens={max_tokens}",
        *backend,
        f"steps.0.resources.batch_size={batch * 4}",
        "steps.0.resources.num_cpus=1",
    ]


def measure(label: str, cmd: list[str], out: Path | None, base_cmd: list[str]) -> dict:
    ours = run_measured(cmd, env=BENCH_ENV)
    base = run_measured(base_cmd, env=BENCH_ENV)
    stats = json.loads((out / "stats.json").read_text()) if out else {}
    counters = stats.get("steps", {}).get("dense_caption", {})
    # Answers generated: the kept captions and the answers judged bad (cut, malformed), which cost a
    # generation too; the bare loop counts every answer it generated.
    kept = counters.get("kept", 0)
    done = kept + counters.get("failed", {}).get("failed_to_caption", 0)
    base_out = json.loads(base["output"].strip().splitlines()[-1])
    ours_rate, base_rate = done / ours["seconds"], base_out["captions"] / base["seconds"]
    print(f"\n{label}")
    print(f"{'':12} {'seconds':>8} {'answers/s':>11} {'peak PSS MiB':>13} {'answers':>9}")
    print(
        f"{'curate run':12} {ours['seconds']:>8.1f} {ours_rate:>11.2f} {ours['peak_pss_mib']:>13.0f} {done:>9} "
        f"({kept} kept as captions)"
    )
    print(
        f"{'bare loop':12} {base['seconds']:>8.1f} {base_rate:>11.2f} {base['peak_pss_mib']:>13.0f} "
        f"{base_out['captions']:>9}"
    )
    print(
        f"throughput ratio curate/bare: {ours_rate / base_rate:.2f}x "
        f"(bare loop's generation alone: {base_out['generate_seconds']:.1f} s)"
    )
    print(f"curate command: {' '.join(cmd)}")
    return {"ratio": ours_rate / base_rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--shard-size", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--skip-openai", action="store_true")
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    from captioners.backends.transformers_backend import TINY_LLAVA_DIR

    root = Path(args.workdir)
    pattern = ensure_pool(root, args.samples, args.shard_size)
    out = root / "caption_run"
    shutil.rmtree(out, ignore_errors=True)
    backend = ["steps.0.params.backend.kind=transformers", "steps.0.params.backend.device=cpu",
               f"steps.0.params.backend.batch_size={args.batch_size}"]  # fmt: skip
    cmd = curate_run_command("basic", pattern, str(out), caption_sets(backend, args.batch_size, args.max_tokens))
    loop = [sys.executable, str(BENCH / "baseline_caption_loop.py"), "--input", pattern, "--model", str(TINY_LLAVA_DIR),
            "--batch-size", str(args.batch_size), "--max-tokens", str(args.max_tokens), "--threads", "1"]  # fmt: skip
    print(f"bench_caption: {args.samples}-sample pool, {os.cpu_count()} CPUs, 1 torch thread each side")
    measure(f"transformers backend, batch {args.batch_size}", cmd, out, loop)
    if not args.skip_openai:
        from model_servers import transformers_serve

        with transformers_serve(TINY_LLAVA_DIR) as url:
            shutil.rmtree(out, ignore_errors=True)
            backend = ["steps.0.params.backend.kind=openai", f"steps.0.params.backend.base_url={url}",
                       f"steps.0.params.backend.model={TINY_LLAVA_DIR}",
                       f"steps.0.params.backend.concurrency={args.concurrency}"]  # fmt: skip
            cmd = curate_run_command(
                "basic", pattern, str(out), caption_sets(backend, args.batch_size, args.max_tokens)
            )
            client = [sys.executable, str(BENCH / "baseline_caption_loop.py"), "--input", pattern, "--mode", "openai",
                      "--model", str(TINY_LLAVA_DIR), "--base-url", url, "--concurrency", str(args.concurrency),
                      "--max-tokens", str(args.max_tokens)]  # fmt: skip
            measure(f"openai backend vs a bare AsyncOpenAI loop, concurrency {args.concurrency}", cmd, out, client)
    print(f"\nreproduce: python bench/bench_caption.py --samples {args.samples} --batch-size {args.batch_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
