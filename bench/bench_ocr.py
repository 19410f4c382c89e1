"""Benchmark: the ocr step (RapidOCR PP-OCRv4, onnxruntime on CPU) inside a curate run vs a bare
RapidOCR loop over the same images with the same engine settings (bench/baseline_ocr_loop.py): the
pipeline's overhead as a throughput ratio. The pool is a synthetic one with words on signs in half
of its scenes (``make_pool(text_rate=0.5)``).

    python bench/bench_ocr.py --samples 400
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

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402


def ensure_text_pool(root: Path, samples: int, shard_size: int, text_rate: float) -> str:
    from curate.synth import FaultRates, make_pool

    pool = root / f"ocr_pool_{samples}_{shard_size}_{text_rate}"
    if not (pool / "_pool.json").exists():
        shutil.rmtree(pool, ignore_errors=True)
        make_pool(str(pool), samples=samples, shard_size=shard_size, seed=0, faults=FaultRates(), text_rate=text_rate)
        (pool / "_pool.json").write_text(json.dumps({"samples": samples, "text_rate": text_rate}))
    n = -(-samples // shard_size)
    return f"{pool}/{{00000000..{n - 1:08d}}}.tar"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--text-rate", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads, in each actor and in the loop")
    ap.add_argument("--concurrency", type=int, default=1, help="ocr actors in the run")
    ap.add_argument("--det-limit-side-len", type=int, default=736)
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    pattern = ensure_text_pool(root, args.samples, args.shard_size, args.text_rate)
    out = root / "ocr_run"
    shutil.rmtree(out, ignore_errors=True)
    sets = [
        "steps=[]",
        "steps.0.name=ocr",
        f"steps.0.params.threads={args.threads}",
        f"steps.0.params.det_limit_side_len={args.det_limit_side_len}",
        "steps.0.resources.batch_size=32",
        f"steps.0.resources.num_cpus={args.threads}",
        f"steps.0.resources.concurrency={args.concurrency}",
    ]
    ours = run_measured(curate_run_command("basic", pattern, str(out), sets), env=BENCH_ENV)
    base_cmd = [
        sys.executable,
        str(BENCH / "baseline_ocr_loop.py"),
        "--input",
        pattern,
        "--threads",
        str(args.threads),
        "--det-limit-side-len",
        str(args.det_limit_side_len),
    ]
    base = run_measured(base_cmd, env=BENCH_ENV)
    stats = json.loads((out / "stats.json").read_text())
    read = stats["steps"]["ocr"]["kept"]
    base_read = json.loads(base["output"].strip().splitlines()[-1])["read"]
    n = args.samples
    print(
        f"\nbench_ocr: ocr (rapidocr-onnxruntime PP-OCRv4, CPU, {args.threads} thread(s) x "
        f"{args.concurrency} actor(s), "
        f"det_limit_side_len {args.det_limit_side_len}) on a {n}-sample pool, text_rate {args.text_rate}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':12} {'seconds':>8} {'images/s':>9} {'peak PSS MiB':>13} {'images':>7}")
    print(
        f"{'curate run':12} {ours['seconds']:>8.1f} {read / ours['seconds']:>9.2f} "
        f"{ours['peak_pss_mib']:>13.0f} {read:>7}"
    )
    print(
        f"{'bare loop':12} {base['seconds']:>8.1f} {base_read / base['seconds']:>9.2f} "
        f"{base['peak_pss_mib']:>13.0f} {base_read:>7}"
    )
    print(
        f"throughput ratio curate/bare: {(read / ours['seconds']) / (base_read / base['seconds']):.2f}x "
        "(curate also starts Ray, writes shards, stage outputs and the catalog)"
    )
    print(
        f"reproduce: python bench/bench_ocr.py --samples {n} --threads {args.threads} --concurrency {args.concurrency}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
