"""make_pool: a deterministic synthetic pool of shards in img2dataset's webdataset layout."""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import Counter
from typing import Any

from curate.synth.faults import FaultRates
from curate.synth.shard import write_shard


def _shard_job(args: tuple[str, int, int, int, int, FaultRates, float, float]) -> dict[str, Any]:
    return write_shard(*args)


def make_pool(
    output_dir: str,
    *,
    samples: int,
    shard_size: int,
    seed: int = 0,
    faults: FaultRates | None = None,
    workers: int = 1,
    text_rate: float = 0.0,
    repeat_rate: float = 0.0,
) -> dict[str, Any]:
    """Write ``ceil(samples / shard_size)`` shards (``00000000.tar/.parquet/_stats.json``, ...).

    Every shard is generated from ``(seed, shard_index)`` alone, so the bytes are identical for the
    same arguments whatever ``workers`` is. Returns summary counts.

    ``text_rate``: the share of scenes drawn with a short English word on a sign, recorded in the
    ground truth (``gt.text``: word and box; ``load_ground_truth``'s ``text_word``). A scene with no
    free place for a sign gets none, so slightly fewer than that share carry one (``texts`` in the
    summary). At 0 (the default) the pool is byte-identical to one made before signs existed.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if isinstance(text_rate, bool) or not isinstance(text_rate, (int, float)) or not 0.0 <= text_rate <= 1.0:
        raise ValueError(f"text_rate must be a number in [0, 1], got {text_rate!r}")
    if isinstance(repeat_rate, bool) or not isinstance(repeat_rate, (int, float)) or not 0.0 <= repeat_rate <= 1.0:
        raise ValueError(f"repeat_rate must be a number in [0, 1], got {repeat_rate!r}")
    rates = faults if faults is not None else FaultRates()
    os.makedirs(output_dir, exist_ok=True)
    n_shards = math.ceil(samples / shard_size)
    jobs = [
        (
            output_dir,
            k,
            min(shard_size, samples - k * shard_size),
            shard_size,
            seed,
            rates,
            float(text_rate),
            float(repeat_rate),
        )
        for k in range(n_shards)
    ]
    if workers == 1 or n_shards <= 1:
        results = [_shard_job(j) for j in jobs]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, n_shards)) as pool:
            results = pool.map(_shard_job, jobs, chunksize=1)
    faults_count: Counter[str] = Counter()
    for r in results:
        faults_count.update(r["faults"])
    summary = {
        "output_dir": output_dir,
        "samples": samples,
        "shards": n_shards,
        "shard_size": shard_size,
        "seed": seed,
        "successes": sum(r["successes"] for r in results),
        "failed_to_download": sum(r["failed_to_download"] for r in results),
        "failed_to_resize": 0,
        "faults": dict(sorted(faults_count.items())),
    }
    if repeat_rate > 0:
        summary["repeat_rate"] = float(repeat_rate)
    if text_rate > 0:
        summary["text_rate"] = float(text_rate)
        summary["texts"] = sum(r["texts"] for r in results)
    return summary
