"""Benchmark: graph-based captions in rounds over a batch of images vs one model call per query (how
apple/ml-gbc runs its queue of actions), with the same model (committed curate-tiny-llava-gbc, CPU),
detector (curate-tiny-yolo-world), prompts, token limit and images.

For each setting it prints the images, the MLLM requests (queries) and their rounds, the backend
calls (``generate`` invocations of the step) and the model's own batched ``generate`` calls, per
image and per round, images per second and the peak RSS of this process. The point to see: with the
images of a batch queried together, backend calls per round stay one and model calls per round grow
with ``ceil(requests / batch_size)`` only, while one call per query grows with every query.

    python bench/bench_gbc.py --samples 48
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))


def load_images(folder: Path, samples: int, seed: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.readers.base import list_shards, read_shard
    from curate.synth import FaultRates, make_pool

    if not any(folder.glob("*.tar")):
        faults = FaultRates.none()
        make_pool(str(folder), samples=samples, shard_size=samples, seed=seed, faults=faults, repeat_rate=0.5)
    table = pa.concat_tables([read_shard(ref) for ref in list_shards(str(folder))])
    return table.filter(pc.equal(table["status"], "success"))


class Counting:
    """Wraps a backend: each ``generate`` call (a round of one batch) and its request count."""

    def __init__(self, backend, model_batch: int):
        self.backend, self.model_batch = backend, model_batch
        self.rounds: list[int] = []
        self.model_name, self.revision = backend.model_name, backend.revision

    def generate(self, requests):
        self.rounds.append(len(requests))
        return self.backend.generate(requests)

    @property
    def model_calls(self) -> int:
        return sum(math.ceil(n / self.model_batch) for n in self.rounds)


def run(table, images_per_batch: int, model_batch: int, max_tokens: int) -> dict:
    from captioners.gbc import GbcCaptioner, GbcParams

    params = GbcParams(
        backend={"kind": "transformers", "model": "curate-tiny-llava-gbc", "device": "cpu", "batch_size": model_batch},
        detector={"device": "cpu"},
        selection={"min_score": 0.1, "min_area_px": 300},
        hints=["alt_text"],
        max_tokens=max_tokens,
    )
    step = GbcCaptioner(params)
    counting = Counting(step.backend, model_batch)
    step.backend = counting
    detections: list[int] = []
    detect = step.detector.detect

    def counted_detect(images, names=None):
        detections.append(len(images))
        return detect(images, names)

    step.detector.detect = counted_detect
    start = time.perf_counter()
    graphs = vertices = 0
    for offset in range(0, table.num_rows, images_per_batch):
        out = step(table.slice(offset, images_per_batch))
        graphs += sum(g is not None for g in out["gbc_graph"].to_pylist())
        vertices += sum(v or 0 for v in out["gbc_vertices"].to_pylist())
    seconds = time.perf_counter() - start
    batches = math.ceil(table.num_rows / images_per_batch)
    requests = sum(counting.rounds)
    return {
        "images_per_batch": images_per_batch,
        "model_batch": model_batch,
        "images": table.num_rows,
        "graphs": graphs,
        "vertices": vertices,
        "requests": requests,
        "requests_per_image": requests / table.num_rows,
        "rounds": len(counting.rounds),
        "rounds_per_batch": len(counting.rounds) / batches,
        "backend_calls_per_round": 1.0,
        "model_calls": counting.model_calls,
        "model_calls_per_round": counting.model_calls / max(1, len(counting.rounds)),
        "requests_per_round": requests / max(1, len(counting.rounds)),
        "detector_calls": len(detections),
        "seconds": seconds,
        "images_per_s": table.num_rows / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--batches", default="1,8,16,48", help="images per batch to measure")
    p.add_argument("--work", type=Path, default=BENCH / "out")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    table = load_images(args.work / f"gbc-pool-{args.samples}-s{args.seed}", args.samples, args.seed)
    results = [run(table, 1, 1, args.max_tokens)]  # one model call per query: ml-gbc's way
    for n in (int(x) for x in args.batches.split(",")):
        results.append(run(table, n, 16, args.max_tokens))
    base = results[0]
    print(f"\ngraph-based captions, {base['images']} images, curate-tiny-llava-gbc on CPU (2 threads)")
    print(
        "| images per batch | model batch | requests/image | rounds/batch | requests/round | model calls/round "
        "| model calls | images/s | vs one call per query |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        label = "1 (one call per query)" if r is base else str(r["images_per_batch"])
        print(
            f"| {label} | {r['model_batch']} | {r['requests_per_image']:.2f} | {r['rounds_per_batch']:.1f} "
            f"| {r['requests_per_round']:.1f} | {r['model_calls_per_round']:.2f} | {r['model_calls']} "
            f"| {r['images_per_s']:.2f} | {r['images_per_s'] / base['images_per_s']:.2f}x |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    graphs, vertices = [r["graphs"] for r in results], [r["vertices"] for r in results]
    print(f"peak RSS {peak:.0f} MiB; graphs {graphs}, vertices {vertices}")
    print("command: python bench/bench_gbc.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
