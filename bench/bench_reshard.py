"""Benchmark: `curate run reshard` (the subset step) vs a plain webdataset tar-rewriting loop
(bench/baseline_reshard_loop.py), on the same synthetic pool and DataComp subset file: half of
the pool's uids, some listed twice. Prints samples/s, peak PSS and the ratio.

    python bench/bench_reshard.py --samples 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from bench_basic import ensure_pool  # noqa: E402

from curate.subset import write_subset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    root = Path(args.workdir)
    pattern = ensure_pool(root, args.samples, args.shard_size)
    pool = Path(pattern.split("/{")[0])
    uids = [u for p in sorted(pool.glob("*.parquet")) for u in pq.read_table(p, columns=["uid"])["uid"].to_pylist()]
    rng = np.random.default_rng(0)
    chosen = list(rng.choice(uids, size=len(uids) // 2, replace=False))
    chosen += chosen[: len(chosen) // 20]  # 5% listed twice: written twice, as DataComp's resharder does
    subset = root / f"reshard_subset_{args.samples}.npy"
    write_subset(subset, chosen)
    ours_out, base_out = root / "reshard_run", root / "reshard_baseline"
    shutil.rmtree(ours_out, ignore_errors=True)
    shutil.rmtree(base_out, ignore_errors=True)
    env = BENCH_ENV
    ours = run_measured(
        curate_run_command("reshard", pattern, str(ours_out), [f"steps.subset.params.path={subset}"]), env=env
    )
    base = run_measured(
        [
            sys.executable,
            str(BENCH / "baseline_reshard_loop.py"),
            "--input",
            pattern,
            "--subset",
            str(subset),
            "--output",
            str(base_out),
        ],
        env=env,
    )
    ours_n = sum(json.loads((ours_out / "shards" / "sizes.json").read_text()).values())
    base_n = json.loads(base["output"].strip().splitlines()[-1])["written"]
    n = args.samples
    print(f"\nbench_reshard: {n}-sample pool, subset of {len(chosen)} entries, {os.cpu_count()} CPUs")
    print(f"{'':10} {'seconds':>8} {'in s/s':>8} {'peak PSS MiB':>13} {'written':>8}")
    print(
        f"{'curate':10} {ours['seconds']:>8.1f} {n / ours['seconds']:>8.0f} {ours['peak_pss_mib']:>13.0f} {ours_n:>8}"
    )
    print(
        f"{'tar loop':10} {base['seconds']:>8.1f} {n / base['seconds']:>8.0f} {base['peak_pss_mib']:>13.0f} {base_n:>8}"
    )
    print(f"speed ratio curate/loop: {base['seconds'] / ours['seconds']:.2f}x; same sample count: {ours_n == base_n}")
    print(f"reproduce: python bench/bench_reshard.py --samples {n}")
    return 0 if ours_n == base_n else 1


if __name__ == "__main__":
    sys.exit(main())
