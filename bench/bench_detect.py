"""Benchmark: the detect step (committed curate-tiny-yolo, CPU) inside a curate run vs a bare
ultralytics ``model.predict`` loop (bench/baseline_detect_loop.py) on the same images, decoded the
same way, with the same batch size and predict arguments: the pipeline's overhead as a throughput
ratio, and the peak memory (PSS of the whole process tree) of each.

    python bench/bench_detect.py --samples 4000
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
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32, help="images per model.predict call, both sides")
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    root = Path(args.workdir)
    pattern = ensure_pool(root, args.samples, args.shard_size)
    out = root / "detect_run"
    shutil.rmtree(out, ignore_errors=True)
    env = BENCH_ENV
    sets = [
        "steps=[]",
        "steps.0.name=detect",
        f"steps.0.params.inference_batch_size={args.batch_size}",
        "steps.0.params.device=cpu",
        "steps.0.resources.batch_size=256",
        "steps.0.resources.num_cpus=1",
    ]
    cmd = curate_run_command("basic", pattern, str(out), sets)
    ours = run_measured(cmd, env=env)
    base_cmd = [
        sys.executable,
        str(BENCH / "baseline_detect_loop.py"),
        "--input",
        pattern,
        "--batch-size",
        str(args.batch_size),
        "--threads",
        "1",
    ]
    base = run_measured(base_cmd, env=env)
    stats = json.loads((out / "stats.json").read_text())
    detected = stats["steps"]["detect"]["kept"]
    base_out = json.loads(base["output"].strip().splitlines()[-1])
    base_detected = base_out["detected"]
    ours_rate, base_rate = detected / ours["seconds"], base_detected / base["seconds"]
    n = args.samples
    print(f"\nbench_detect: detect (curate-tiny-yolo, 160 px, CPU, batch {args.batch_size}) on a {n}-sample pool")
    print(f"{os.cpu_count()} CPUs; one 1-CPU actor in the run, torch.set_num_threads(1) in the bare loop")
    print(f"{'':12} {'seconds':>8} {'images/s':>9} {'peak PSS MiB':>13} {'images':>7}")
    print(f"{'curate run':12} {ours['seconds']:>8.1f} {ours_rate:>9.1f} {ours['peak_pss_mib']:>13.0f} {detected:>7}")
    print(
        f"{'bare loop':12} {base['seconds']:>8.1f} {base_rate:>9.1f} {base['peak_pss_mib']:>13.0f} {base_detected:>7}"
    )
    print(
        f"throughput ratio curate/bare: {ours_rate / base_rate:.2f}x (curate's time includes Ray start-up and "
        f"writing shards, sidecars and the catalog; the bare loop's predict calls alone took "
        f"{base_out['predict_seconds']:.1f} s)"
    )
    print(f"curate command: {' '.join(cmd)}")
    print(f"reproduce: python bench/bench_detect.py --samples {n} --batch-size {args.batch_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
