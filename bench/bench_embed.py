"""Benchmark: the clip_embed step inside a curate run vs a bare open_clip forward loop over the
same images and model (bench/baseline_embed_loop.py): the pipeline's overhead as a throughput
ratio. The model is the committed curate-tiny-clip (CPU); a big CLIP on a GPU shifts the balance
towards the model, so this is the worst case for overhead.

The baseline (bench/baseline_embed_loop.py) is the least work the same scores can cost: each JPEG
decoded once in draft mode at the model's input size (the step's own decode), the same batches
(inference_batch_size), nothing written. It runs twice: on one process with torch on every core,
and per shard in a multiprocessing.Pool of one process per core (one torch thread each, so that
decoding runs on every core too), the strongest fair match for a pipeline that uses every core.

    python bench/bench_embed.py --samples 10000
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from bench_basic import ensure_pool, loop_name, pool_bench_args, run_loops  # noqa: E402

# The step's and the baseline's batch of images per forward pass.
INFERENCE_BATCH_SIZE = 64


def main() -> int:
    args, root = pool_bench_args(__doc__, [10_000])
    env = BENCH_ENV
    sets = [
        "steps=[]",
        "steps.0.name=clip_embed",
        "steps.0.params.model=curate-tiny-clip",
        "steps.0.params.pretrained=curate",
        f"steps.0.params.inference_batch_size={INFERENCE_BATCH_SIZE}",
        "steps.0.resources.batch_size=256",
        "steps.0.resources.num_cpus=1",
    ]
    print(f"\nbench_embed: clip_embed (curate-tiny-clip, CPU) vs a bare open_clip loop, {os.cpu_count()} CPUs")
    print(
        f"{'samples':>8} {'side':>10} {'seconds':>8} {'scored/s':>9} {'curate x':>9} {'peak PSS MiB':>13} {'scored':>7}"
    )
    same = True
    for n in args.samples:
        pattern = ensure_pool(root, n, args.shard_size)
        out = root / "embed_run"
        shutil.rmtree(out, ignore_errors=True)
        ours = run_measured(curate_run_command("basic", pattern, str(out), sets), env=env)
        scored = json.loads((out / "stats.json").read_text())["steps"]["clip_embed"]["kept"]
        print(
            f"{n:>8} {'curate':>10} {ours['seconds']:>8.1f} {scored / ours['seconds']:>9.0f} {'':>9} "
            f"{ours['peak_pss_mib']:>13.0f} {scored:>7}"
        )
        loops = run_loops("baseline_embed_loop.py", ["--input", pattern, "--batch-size", str(INFERENCE_BATCH_SIZE)])
        for p, run in loops.items():
            bare = json.loads(run["output"].strip().splitlines()[-1])
            same &= bare["scored"] == scored
            ratio = (scored / ours["seconds"]) / (bare["scored"] / run["seconds"])
            name = f"{loop_name(p)}, {bare['torch_threads']}t"
            print(
                f"{n:>8} {name:>10} {run['seconds']:>8.1f} {bare['scored'] / run['seconds']:>9.0f} {ratio:>9.2f} "
                f"{run['peak_pss_mib']:>13.0f} {bare['scored']:>7}"
            )
    print(
        f"curate x: curate's scored/s over the loop's; Nt: torch threads per process. Bare loops: draft decode, "
        f"batches of {INFERENCE_BATCH_SIZE}, nothing written; curate also writes shards, sidecars and the catalog. "
        f"Same scored count on every side: {same}"
    )
    print(
        f"reproduce: python bench/bench_embed.py --samples {' '.join(map(str, args.samples))} "
        f"--shard-size {args.shard_size}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
