"""Baseline for bench_reshard: rewrite tars keeping the samples whose uid is in a DataComp subset,
in one process with webdataset, the way a quick resharder script would (no resume, no records)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import braceexpand
import numpy as np
import webdataset as wds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--subset", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    pairs = np.load(args.subset)
    wanted = Counter(f"{int(hi):016x}{int(lo):016x}" for hi, lo in pairs.tolist())
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, tar in enumerate(braceexpand.braceexpand(args.input)):
        with wds.TarWriter(str(out / f"{i:08d}.tar")) as sink:
            for sample in wds.WebDataset(tar, shardshuffle=False, handler=wds.warn_and_continue):
                uid = json.loads(sample["json"]).get("uid")
                for copy in range(wanted.get(uid, 0)):
                    key = sample["__key__"] if copy == 0 else f"{sample['__key__']}_{copy}"
                    sink.write({"__key__": key, "jpg": sample["jpg"], "txt": sample["txt"], "json": sample["json"]})
                    written += 1
    print(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
