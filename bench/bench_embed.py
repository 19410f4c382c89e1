"""Benchmark: the clip_embed step inside a curate run vs a bare open_clip forward loop over the
same images and model (bench/baseline_embed_loop.py): the pipeline's overhead as a throughput
ratio. The model is the committed curate-tiny-clip (CPU); a big CLIP on a GPU shifts the balance
towards the model, so this is the worst case for overhead.

    python bench/bench_embed.py --samples 10000
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
from bench_basic import ensure_pool  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    root = Path(args.workdir)
    pattern = ensure_pool(root, args.samples, args.shard_size)
    out = root / "embed_run"
    shutil.rmtree(out, ignore_errors=True)
    env = BENCH_ENV
    sets = [
        "steps=[]",
        "steps.0.name=clip_embed",
        "steps.0.params.model=curate-tiny-clip",
        "steps.0.params.pretrained=curate",
        "steps.0.params.inference_batch_size=64",
        "steps.0.resources.batch_size=256",
        "steps.0.resources.num_cpus=1",
    ]
    ours = run_measured(curate_run_command("basic", pattern, str(out), sets), env=env)
    base = run_measured([sys.executable, str(BENCH / "baseline_embed_loop.py"), "--input", pattern], env=env)
    stats = json.loads((out / "stats.json").read_text())
    scored = stats["steps"]["clip_embed"]["kept"]
    base_scored = json.loads(base["output"].strip().splitlines()[-1])["scored"]
    n = args.samples
    print(f"\nbench_embed: clip_embed (curate-tiny-clip, CPU) on a {n}-sample pool, {os.cpu_count()} CPUs")
    print(f"{'':12} {'seconds':>8} {'scored/s':>9} {'peak PSS MiB':>13} {'scored':>7}")
    print(
        f"{'curate run':12} {ours['seconds']:>8.1f} {scored / ours['seconds']:>9.0f} "
        f"{ours['peak_pss_mib']:>13.0f} {scored:>7}"
    )
    print(
        f"{'bare loop':12} {base['seconds']:>8.1f} {base_scored / base['seconds']:>9.0f} "
        f"{base['peak_pss_mib']:>13.0f} {base_scored:>7}"
    )
    print(
        f"throughput ratio curate/bare: {(scored / ours['seconds']) / (base_scored / base['seconds']):.2f}x "
        "(curate also writes shards, sidecars and the catalog, and decodes JPEGs in draft mode)"
    )
    print(f"reproduce: python bench/bench_embed.py --samples {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
