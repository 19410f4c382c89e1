"""Baseline for bench_reshard: rewrite tars keeping the samples whose uid is in a DataComp subset,
with webdataset, the way a quick resharder script would (no resume, no records): one output tar
per input shard, a uid listed n times written n times.

``--processes 1`` is the single-process loop; ``--processes N`` runs the same work per shard in a
``multiprocessing.Pool`` of N processes, the fair match for a pipeline that uses every core.
The per-shard pool is ``_pool.map_shards``, shared by the other bare loops.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import webdataset as wds
from _pool import map_shards

_wanted: Counter = Counter()


def _load_subset(path: str) -> None:
    """The subset as uid -> times listed, once per process."""
    pairs = np.load(path)
    _wanted.update(f"{int(hi):016x}{int(lo):016x}" for hi, lo in pairs.tolist())


def _reshard(i: int, tar: str, out: Path) -> int:
    written = 0
    with wds.TarWriter(str(out / f"{i:08d}.tar")) as sink:
        for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
            uid = json.loads(sample["json"]).get("uid")
            for copy in range(_wanted.get(uid, 0)):
                key = sample["__key__"] if copy == 0 else f"{sample['__key__']}_{copy}"
                sink.write({"__key__": key, "jpg": sample["jpg"], "txt": sample["txt"], "json": sample["json"]})
                written += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--subset", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = map_shards(partial(_reshard, out=out), args.input, args.processes, _load_subset, (args.subset,))
    print(json.dumps({"written": sum(written)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
