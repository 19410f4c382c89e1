"""Benchmark: pipelines/basic.yaml on synthetic pools of several sizes, against a plain loop.

Prints samples/s and peak memory for curate and for bench/baseline_basic_loop.py on the same
pool, and the ratios against both forms of the loop: one process (what a quick script does), and
the same loop per shard in a multiprocessing.Pool of one process per core, the strongest fair
baseline, since curate uses every core too. No reference tool does this work in one pass:
DataComp filters the metadata (baselines.py, see bench_datacomp_filters.py), then reshards
(resharder.py, see bench_reshard.py), and never decodes the images as basic.yaml's image_check does.

Memory is PSS summed over the whole process tree (driver, Ray's processes and workers, the pool's
processes), so shared pages such as Ray's object store count once. Memory that does not grow with
the pool shows as flat PSS over the quarters of a run and across pool sizes.

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
    # A pool is cached by its sample count; one cut into other shards would not match the pattern.
    if not stamp.exists() or _made_shard_size(pool, samples) != shard_size:
        shutil.rmtree(pool, ignore_errors=True)
        t = time.perf_counter()
        make_pool(str(pool), samples=samples, shard_size=shard_size, seed=0, workers=os.cpu_count() or 1)
        stamp.write_text(json.dumps({"samples": samples, "shard_size": shard_size, "seconds": time.perf_counter() - t}))
    last = (samples + shard_size - 1) // shard_size - 1
    return f"{pool}/{{{0:08d}..{last:08d}}}.tar"


def _made_shard_size(pool: Path, samples: int) -> int:
    """The shard size a cached pool was made with (older stamps lack it: from its tar count)."""
    made = json.loads((pool / "_pool.json").read_text())
    return made.get("shard_size") or -(-samples // max(1, len(list(pool.glob("*.tar")))))


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


def run_loops(script: str, args: list[str], output: Path | None = None) -> dict[int, dict]:
    """``run_measured`` of a bare loop (``bench/<script> ARGS --processes P``) on one process and on
    a pool of one process per core, keyed by P: a pipeline on every core is compared with both.
    With ``output``, each run writes to its own ``--output OUTPUT_pP``, returned as ``folder``."""
    runs = {}
    for p in sorted({1, os.cpu_count() or 1}):
        cmd = [sys.executable, str(BENCH / script), *args, "--processes", str(p)]
        folder = None if output is None else output.with_name(f"{output.name}_p{p}")
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            cmd += ["--output", str(folder)]
        runs[p] = {**run_measured(cmd, env=BENCH_ENV), "folder": folder}
    return runs


def loop_name(processes: int) -> str:
    return "loop" if processes == 1 else f"Pool({processes})"


def main() -> int:
    args, root = pool_bench_args(__doc__, [10_000, 100_000])
    cpus = os.cpu_count() or 1
    rows = []
    for n in args.samples:
        pattern = ensure_pool(root, n, args.shard_size)
        ours_out = root / f"run_{n}"
        shutil.rmtree(ours_out, ignore_errors=True)
        ours = run_measured(curate_run_command("basic", pattern, str(ours_out)), env=BENCH_ENV)
        loops = run_loops("baseline_basic_loop.py", ["--input", pattern], root / f"baseline_{n}")
        written = json.loads((ours_out / "stats.json").read_text())["written"]
        kept = {p: json.loads(run["output"].strip().splitlines()[-1])["kept"] for p, run in loops.items()}
        rows.append((n, ours, loops, written, kept))
    print(f"\nbench_basic: pipelines/basic.yaml vs the same work as a plain loop, {cpus} CPUs")
    print(
        "baselines: the loop on 1 process, and the same loop per shard in a multiprocessing.Pool of "
        f"{cpus} processes (the strongest fair one: curate uses every core too)"
    )
    print(
        f"{'samples':>8} {'side':>10} {'seconds':>8} {'samples/s':>10} {'curate x':>9} {'peak PSS MiB':>13} "
        f"{'kept':>7} {'same kept':>10}"
    )
    same = True
    for n, ours, loops, written, kept in rows:
        sides = [("curate", ours, "", written, "")]
        sides += [
            (loop_name(p), run, f"{run['seconds'] / ours['seconds']:.2f}", kept[p], kept[p] == written)
            for p, run in loops.items()
        ]
        for name, run, ratio, count, equal in sides:
            same &= count == written
            print(
                f"{n:>8} {name:>10} {run['seconds']:>8.1f} {n / run['seconds']:>10.0f} {ratio:>9} "
                f"{run['peak_pss_mib']:>13.0f} {count:>7} {equal!s:>10}"
            )
    print(
        "curate x: curate's speed over the loop's. curate's time is the whole process "
        "(imports, planning, its worker processes' start, the catalog). "
        f"reproduce: python bench/bench_basic.py --samples {' '.join(map(str, args.samples))} "
        f"--shard-size {args.shard_size}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
