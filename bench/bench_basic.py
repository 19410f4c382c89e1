"""Benchmark: pipelines/basic.yaml on synthetic pools of several sizes, against a plain loop.

Prints samples/s and peak memory for curate and for bench/baseline_basic_loop.py on the same
pool, and the ratios. Memory is PSS summed over the whole process tree (driver, Ray's processes
and workers), so shared pages such as Ray's object store count once. Memory that does not grow
with the pool shows as flat PSS over the quarters of a run and across pool sizes.

    python bench/bench_basic.py --samples 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402

from curate.synth import make_pool  # noqa: E402

BENCH = Path(__file__).resolve().parent


def ensure_pool(root: Path, samples: int, shard_size: int) -> str:
    pool = root / f"pool_{samples}"
    stamp = pool / "_pool.json"
    if not stamp.exists():
        shutil.rmtree(pool, ignore_errors=True)
        t = time.perf_counter()
        make_pool(str(pool), samples=samples, shard_size=shard_size, seed=0, workers=os.cpu_count() or 1)
        stamp.write_text(json.dumps({"samples": samples, "seconds": time.perf_counter() - t}))
    last = (samples + shard_size - 1) // shard_size - 1
    return f"{pool}/{{{0:08d}..{last:08d}}}.tar"


def pool_bench_args(doc: str, samples: list[int]) -> tuple[argparse.Namespace, Path]:
    """The arguments of a benchmark over synthetic pools of several sizes, and its work folder."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=samples)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default=str(BENCH / "out"))
    args = ap.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    return args, root


def main() -> int:
    args, root = pool_bench_args(__doc__, [10_000, 100_000])
    env = BENCH_ENV
    rows = []
    for n in args.samples:
        pattern = ensure_pool(root, n, args.shard_size)
        ours_out, base_out = root / f"run_{n}", root / f"baseline_{n}"
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(base_out, ignore_errors=True)
        ours = run_measured(curate_run_command("basic", pattern, str(ours_out)), env=env)
        base = run_measured(
            [sys.executable, str(BENCH / "baseline_basic_loop.py"), "--input", pattern, "--output", str(base_out)],
            env=env,
        )
        written = json.loads((ours_out / "stats.json").read_text())["written"]
        base_kept = json.loads(base["output"].strip().splitlines()[-1])["kept"]
        rows.append((n, ours, base, written, base_kept))
    print(f"\nbench_basic: pipelines/basic.yaml vs a plain loop, {os.cpu_count()} CPUs")
    print(
        f"{'samples':>8} {'curate s/s':>11} {'loop s/s':>9} {'speed x':>8} {'curate PSS MiB':>15} "
        f"{'loop PSS MiB':>13} {'kept (curate/loop)':>19}"
    )
    for n, ours, base, written, base_kept in rows:
        print(
            f"{n:>8} {n / ours['seconds']:>11.0f} {n / base['seconds']:>9.0f} "
            f"{base['seconds'] / ours['seconds']:>8.2f} {ours['peak_pss_mib']:>15.0f} {base['peak_pss_mib']:>13.0f} "
            f"{written:>9}/{base_kept:<9}"
        )
    print(
        "curate's time includes Ray start-up (about 5 s). reproduce: python bench/bench_basic.py --samples "
        + " ".join(str(n) for n in args.samples)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
