"""Benchmark: `curate run reshard` (the subset step) on a synthetic pool and a DataComp subset file
(half of the pool's uids, some listed twice), against three baselines doing the same work:

- DataComp's own resharder.py, the reference tool, with one worker per core (its default). It
  needs its pinned dependencies in a venv of its own: `bash bench/setup_datacomp_venv.sh
  PATH/TO/datacomp`, then set DATACOMP_DIR (the checkout) and DATACOMP_PYTHON (the venv's python);
  without them it is skipped, and the bench says so.
- bench/baseline_reshard_loop.py, a plain webdataset tar-rewriting loop, on one process and per
  shard in a multiprocessing.Pool of one process per core (the strongest fair bare loop, since
  curate uses every core too).

Every side must write the same multiset of uids: each pool sample whose uid the subset lists n
times, n times (DataComp's resharder writes copies under the keys `{uid}-0`, `{uid}-1`, ...; the
others keep the sample's key for the first copy). The bench reads every written sample's uid back
from its json and compares the multisets with the subset's; it fails if any side differs.

    python bench/bench_reshard.py --samples 10000
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _measure import BENCH_ENV, curate_run_command, run_measured  # noqa: E402
from bench_basic import ensure_pool, loop_name, pool_bench_args, run_loops  # noqa: E402

from curate.subset import write_subset  # noqa: E402

ENABLE_DATACOMP = (
    "bash bench/setup_datacomp_venv.sh PATH/TO/datacomp, then export the DATACOMP_DIR and DATACOMP_PYTHON it prints"
)


def written_uids(folder: Path) -> Counter:
    """uid -> times written, over every sample json in the folder's tars."""
    uids: Counter = Counter()
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    uids[json.loads(tar.extractfile(member).read())["uid"]] += 1
    return uids


def datacomp_resharder(pool: Path, subset: Path, out: Path, shard_size: int) -> dict | None:
    """run_measured of DataComp's resharder.py over the pool, or None when its venv is not set up."""
    checkout, python = os.environ.get("DATACOMP_DIR"), os.environ.get("DATACOMP_PYTHON")
    if not checkout or not python:
        return None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)  # it writes into an existing, empty folder
    cmd = [python, str(Path(checkout) / "resharder.py"), "-i", str(pool), "-o", str(out), "-s", str(subset)]
    cmd += ["--num-workers", str(os.cpu_count() or 1), "--shard-size", str(shard_size)]
    return {**run_measured(cmd, env=BENCH_ENV), "folder": out}


def subset_of(pool: Path, root: Path, n: int) -> tuple[Path, int, Counter]:
    """The bench's subset file (half of the pool's uids, 5% of those twice), its entry count, and
    what a resharder must write from it: uid -> copies, for the uids the pool's tars hold."""
    table = pa.concat_tables(pq.read_table(p, columns=["uid", "status"]) for p in sorted(pool.glob("*.parquet")))
    uids = table["uid"].to_pylist()
    in_tars = set(table.filter(pc.field("status") == "success")["uid"].to_pylist())
    chosen = list(np.random.default_rng(0).choice(uids, size=len(uids) // 2, replace=False))
    chosen += chosen[: len(chosen) // 20]  # listed twice: written twice, as DataComp's resharder does
    subset = root / f"reshard_subset_{n}.npy"
    write_subset(subset, chosen)
    return subset, len(chosen), Counter(u for u in chosen if u in in_tars)


def main() -> int:
    args, root = pool_bench_args(__doc__, [10_000])
    cpus = os.cpu_count() or 1
    print(f"\nbench_reshard: curate run reshard vs DataComp's resharder.py and a plain tar loop, {cpus} CPUs")
    print(
        f"{'samples':>8} {'side':>14} {'seconds':>8} {'in s/s':>8} {'curate x':>9} {'peak PSS MiB':>13} {'written':>8}"
    )
    same, skipped = True, False
    for n in args.samples:
        pattern = ensure_pool(root, n, args.shard_size)
        pool = Path(pattern.split("/{")[0])
        subset, entries, expected = subset_of(pool, root, n)
        ours_out = root / "reshard_run"
        shutil.rmtree(ours_out, ignore_errors=True)
        ours = run_measured(
            curate_run_command("reshard", pattern, str(ours_out), [f"steps.subset.params.path={subset}"]), env=BENCH_ENV
        )
        sides = {"curate": {**ours, "folder": ours_out / "shards"}}
        loops = run_loops(
            "baseline_reshard_loop.py", ["--input", pattern, "--subset", str(subset)], root / "reshard_loop"
        )
        sides.update({loop_name(p): run for p, run in loops.items()})
        datacomp = datacomp_resharder(pool, subset, root / "reshard_datacomp", args.shard_size)
        if datacomp is not None:
            sides[f"DataComp -j {cpus}"] = datacomp
        skipped |= datacomp is None
        for name, run in sides.items():
            written = written_uids(run["folder"])
            same &= written == expected
            speed = "" if run is sides["curate"] else f"{run['seconds'] / ours['seconds']:.2f}"
            print(
                f"{n:>8} {name:>14} {run['seconds']:>8.1f} {n / run['seconds']:>8.0f} {speed:>9} "
                f"{run['peak_pss_mib']:>13.0f} {sum(written.values()):>8}{'' if written == expected else ' DIFFERS'}"
            )
        print(f"{n:>8} subset: {entries} entries, {sum(expected.values())} of them in the pool's tars")
    if skipped:
        print(f"DataComp's resharder.py: skipped (DATACOMP_DIR / DATACOMP_PYTHON unset); to enable: {ENABLE_DATACOMP}")
    print(f"curate x: curate's speed over that side's. Every side wrote the subset's uid multiset: {same}")
    print(
        f"reproduce: python bench/bench_reshard.py --samples {' '.join(map(str, args.samples))} "
        f"--shard-size {args.shard_size}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
