"""Benchmark: MoDE's fine level (balanced spherical k-means, filters/clustering.py) against the
strongest baselines we can run, on the same vectors in one process.

Ours is timed exactly as ``MoDEClusterer.global_state`` + ``decide`` run it: ``balanced_kmeans`` on a
seeded sample of ``--fit-sample`` rows (numpy's seeded RNG, without replacement), then every row
assigned in chunks as the streaming pass does (``assignment: balanced``: argmax of similarity minus
the fitted per-centre price among the row's nearest candidates). The
coarse level (k-means of the 1024 fine centres into a few experts) is left out: it clusters 1024
points and takes milliseconds.

Baselines, and why each is there:

- scikit-learn's MiniBatchKMeans, fitted on all rows (its own minibatching bounds the work) and on
  the same sample as ours, then ``.predict`` on every row: the fastest widely used k-means on a
  CPU, so the bar for time. It does not try to balance, so it is no bar for balance.
- Sinkhorn (bench/baseline_mode_sinkhorn.py): the standard balanced assignment (entropic optimal
  transport with equal column marginals, as in SwAV), over ours' own faiss centres (the same fit,
  its time charged), eps annealed and stabilised so the hard argmax is balanced; its dual prices
  assign every row with ours' streaming rule, argmax(similarity - price) (over all centres, where
  ours looks among a row's 16 nearest). "sinkhorn k-means" then runs as many
  Lloyd rounds on the Sinkhorn assignment as ours runs balanced rounds. Same sample, same start,
  same number of rounds, same assignment rule for the rest of the pool: the strongest fair
  balanced rival, and it always runs.
- MoDE's reference (bench/baseline_mode_reference.py): the auction-balanced k-means MetaCLIP's
  apps/mode fits with (kernelmachine/balanced-kmeans, online over files of rows), then nearest
  centre as its inference does. The method itself, not a rival design; it runs from a copy named by
  ``$BALANCED_KMEANS_DIR`` (skipped with a message when unset) and only at small sizes on a CPU.

Data. A real encoder cannot embed a million captions here in time (the bundled MiniLM does about
1000 captions/s on 2 CPUs), so by default the vectors are a seeded, imbalanced mixture shaped like
caption embeddings:

- 4096 topic centres on the unit sphere, each a random direction plus a shared direction (every
  sentence encoder's embeddings sit in a cone), so two topics have cosine ~0.1;
- topic weights Zipf-like, p_i ~ 1 / (i + 1) ** 1.0: web data is heavy-tailed, a few topics
  (stock-photo boilerplate, product listings) dominate; the largest topic holds ~11% of rows;
- a point is its topic centre plus isotropic Gaussian noise scaled so that two points of the same
  topic have cosine ~0.6 (and a point has cosine ~0.77 with its topic centre), then L2-normalised.

``--vectors emb.npy`` loads real embeddings (N, D) instead, e.g. a run's ``text_emb`` exported to
``.npy``; ``--rows`` then caps how many are used.

Metrics, per method: fit, assign and total seconds; peak RSS of this process while the method ran
(psutil, sampled every 20 ms in a thread; the vectors themselves are resident throughout and are
shown separately as the baseline); and, for the final assignment of all rows,
cluster sizes (CV, max/mean, min, empty) and the mean cosine of each vector to its assigned centre
(the centre L2-normalised; higher is better).

The last lines name the strongest baseline per metric (total time; size CV and cos among the
balanced ones) and list every baseline and metric where the baseline beats ours.

    python bench/bench_mode_kmeans.py
    python bench/bench_mode_kmeans.py --rows 50000 --clusters 64
    BALANCED_KMEANS_DIR=bench/out/balanced-kmeans PYTHONPATH=bench/out/balanced-kmeans-deps \
        python bench/bench_mode_kmeans.py --rows 20000 --clusters 64 --fit-sample 8192 --reference-chunk 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from filters import clustering  # noqa: E402
from filters.clustering import CentroidIndex, balanced_kmeans, priced_choice, size_spread  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from baseline_mode_reference import ENV as REFERENCE_ENV  # noqa: E402
from baseline_mode_reference import load_reference, reference_fit  # noqa: E402
from baseline_mode_sinkhorn import STAGE_ITERATIONS, eps_schedule, priced_assign, sinkhorn_kmeans  # noqa: E402

# MoDE defaults (filters/mode.py ModeParams).
ITERATIONS = 20
BALANCE_ITERATIONS = 10
CANDIDATES = 16

TOPICS = 4096
ZIPF = 1.0
SAME_TOPIC_COS = 0.6
SHARED_DIRECTION = 0.33  # weight of the common direction in a topic centre: topic-topic cosine ~0.1
CHUNK = 65_536  # rows per streaming-assignment chunk

SK_BATCH = 4096
SK_MAX_ITER = 100  # sklearn's default; its early stopping (max_no_improvement=10) usually ends far sooner


def mixture(rows: int, dim: int, seed: int) -> np.ndarray:
    """Seeded imbalanced mixture of ``TOPICS`` noisy unit-sphere topics (see the module docstring)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    centres = rng.standard_normal((TOPICS, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = centres + SHARED_DIRECTION * shared
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    weights = 1.0 / np.arange(1, TOPICS + 1) ** ZIPF
    topic = rng.choice(TOPICS, size=rows, p=weights / weights.sum())
    # x = c + sigma * g, |g| ~ 1: same-topic cosine ~ 1 / (1 + sigma^2).
    sigma = np.float32(np.sqrt(1.0 / SAME_TOPIC_COS - 1.0) / np.sqrt(dim))
    out = np.empty((rows, dim), np.float32)
    for lo in range(0, rows, CHUNK):
        hi = min(rows, lo + CHUNK)
        block = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block *= sigma
        block += centres[topic[lo:hi]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def load_vectors(path: str, rows: int) -> np.ndarray:
    matrix = np.load(path, mmap_mode="r")
    if matrix.ndim != 2:
        raise SystemExit(f"--vectors: {path} holds an array of shape {matrix.shape}, expected (N, D)")
    matrix = np.asarray(matrix[:rows], dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    matrix = matrix[finite]
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


class PeakRSS:
    """Peak resident set size of this process, sampled in a background thread."""

    def __init__(self, interval: float = 0.02):
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def reset(self) -> int:
        self.peak = self.proc.memory_info().rss
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def timed(store: dict, key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start


def assign_quality(vectors: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine of each vector to its assigned (L2-normalised) centre."""
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    total = 0.0
    for lo in range(0, len(vectors), CHUNK):
        hi = min(len(vectors), lo + CHUNK)
        total += float(np.einsum("ij,ij->i", vectors[lo:hi], unit[labels[lo:hi]], dtype=np.float64).sum())
    return total / len(vectors)


def run_ours(vectors: np.ndarray, sample: np.ndarray, clusters: int, seed: int, mem: PeakRSS) -> dict:
    # Wrap the two stages balanced_kmeans calls (module globals, looked up per call) to see where
    # the fit time goes; the wrappers add a perf_counter pair per call.
    parts: dict = {}
    rounds: list[float] = []
    kmeans, assign = clustering.spherical_kmeans, clustering.balanced_assign

    def timed_kmeans(*a, **kw):
        cpu = cpu_seconds()
        with timed(parts, "faiss_kmeans"):
            parts["faiss_centroids"] = kmeans(*a, **kw)  # the Sinkhorn baselines start from these centres
        parts["faiss_cpu"] = cpu_seconds() - cpu
        return parts["faiss_centroids"]

    def timed_assign(*a, **kw):
        start = time.perf_counter()
        out = assign(*a, **kw)
        rounds.append(time.perf_counter() - start)
        return out

    clustering.spherical_kmeans, clustering.balanced_assign = timed_kmeans, timed_assign
    mem.reset()
    cpu = cpu_seconds()
    try:
        start = time.perf_counter()
        fit = balanced_kmeans(
            sample,
            clusters,
            iterations=ITERATIONS,
            balance_iterations=BALANCE_ITERATIONS,
            seed=seed,
            candidates=CANDIDATES,
        )
        fit_s = time.perf_counter() - start
    finally:
        clustering.spherical_kmeans, clustering.balanced_assign = kmeans, assign
    # The streaming pass as MoDEClusterer.decide runs it (assignment: balanced): each row goes to
    # argmax(similarity - price) among its CANDIDATES nearest centres.
    start = time.perf_counter()
    index = CentroidIndex(fit.centroids)
    labels = np.empty(len(vectors), np.int64)
    sims = np.empty(len(vectors), np.float32)
    nearest = np.empty(len(vectors), np.int64)
    for lo in range(0, len(vectors), CHUNK):
        hi = min(len(vectors), lo + CHUNK)
        top_sims, top_ids = index.search(vectors[lo:hi], CANDIDATES)
        labels[lo:hi], sims[lo:hi] = priced_choice(top_sims, top_ids, fit.prices)
        nearest[lo:hi] = top_ids[:, 0]
    assign_s = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    result = _result(fit_s, assign_s, cpu, mem.peak, labels, clusters, float(sims.astype(np.float64).mean()))
    result["faiss"] = {k: parts[k] for k in ("faiss_centroids", "faiss_kmeans", "faiss_cpu")}
    result["breakdown"] = {
        "faiss_kmeans": parts.get("faiss_kmeans", 0.0),
        "balance_rounds": rounds,
        "rest": fit_s - parts.get("faiss_kmeans", 0.0) - sum(rounds),
    }
    result["fit_sample_sizes"] = (size_spread(fit.balanced_sizes), size_spread(fit.priced_sizes))
    result["nearest_sizes"] = size_spread(np.bincount(nearest, minlength=clusters))
    return result


def _result(fit_s: float, assign_s: float, cpu: float, peak: int, labels: np.ndarray, clusters: int, quality: float):
    return {
        "fit_s": fit_s,
        "assign_s": assign_s,
        "cpu_s": cpu,
        "peak": peak,
        "sizes": np.bincount(labels, minlength=clusters),
        "quality": quality,
    }


def run_sklearn(vectors: np.ndarray, fit_on: np.ndarray, clusters: int, seed: int, mem: PeakRSS) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(
        n_clusters=clusters,
        batch_size=SK_BATCH,
        n_init=1,
        max_iter=SK_MAX_ITER,
        random_state=seed,
        compute_labels=False,  # labels come from .predict below, timed as the assignment
    )
    mem.reset()
    cpu = cpu_seconds()
    start = time.perf_counter()
    model.fit(fit_on)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    labels = model.predict(vectors)
    assign_s = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    quality = assign_quality(vectors, model.cluster_centers_, labels)
    return {
        **_result(fit_s, assign_s, cpu, mem.peak, labels, clusters, quality),
        "steps": int(model.n_steps_),
        "epochs": model.n_steps_ * SK_BATCH / len(fit_on),
        "init_size": getattr(model, "_init_size", "?"),
    }


def run_sinkhorn(vectors: np.ndarray, sample: np.ndarray, faiss: dict, rounds: int, mem: PeakRSS) -> dict:
    """Both Sinkhorn baselines from ours' own faiss centres (the same call on the same sample, so it
    is not run twice; its wall and CPU seconds are charged to each). The plain assignment's fit is
    the first Sinkhorn solve, a prefix of the k-means fit: its CPU seconds are that share of the
    fit's, by wall time. Peak memory is the phase's, the same for both."""
    mem.reset()
    cpu = cpu_seconds()
    fit = sinkhorn_kmeans(sample, faiss["faiss_centroids"], rounds=rounds)
    fit_cpu = cpu_seconds() - cpu
    out = {}
    for key, part in (("sinkhorn", fit["first"]), ("sinkhorn_km", fit["final"])):
        cpu, start = cpu_seconds(), time.perf_counter()
        labels, sims = priced_assign(vectors, part["centroids"], part["prices"])
        assign_s, assign_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        fit_s = faiss["faiss_kmeans"] + part["seconds"]
        cpu_s = faiss["faiss_cpu"] + fit_cpu * part["seconds"] / fit["final"]["seconds"] + assign_cpu
        out[key] = _result(fit_s, assign_s, cpu_s, mem.peak, labels, len(part["prices"]), float(sims.mean()))
        out[key]["solve"] = (part["iterations"], part["row_error"])
    sample_sizes = np.bincount(fit["final"]["sample_labels"], minlength=len(fit["final"]["prices"]))
    out["sinkhorn_km"]["sample_sizes"] = size_spread(sample_sizes)
    return out


def run_reference(module, vectors: np.ndarray, sample: np.ndarray, clusters: int, args, mem: PeakRSS) -> dict:
    mem.reset()
    cpu = cpu_seconds()
    start = time.perf_counter()
    centroids, fitted = reference_fit(
        module, sample, clusters, chunk=args.reference_chunk, iter_limit=args.reference_iter_limit, seed=args.seed
    )
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    index = CentroidIndex(centroids)  # prep_inference.py: nearest L2-normalised centre
    labels, sims = zip(*(index.nearest(vectors[lo : lo + CHUNK]) for lo in range(0, len(vectors), CHUNK)), strict=True)
    assign_s = time.perf_counter() - start
    labels, sims = np.concatenate(labels), np.concatenate(sims)
    result = _result(fit_s, assign_s, cpu_seconds() - cpu, mem.peak, labels, clusters, float(sims.mean()))
    result["fitted_rows"] = fitted
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1024)
    ap.add_argument("--fit-sample", type=int, default=262_144)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vectors", help="real embeddings (N, D) in .npy instead of the synthetic mixture")
    ap.add_argument("--skip-sklearn-full", action="store_true", help="only fit sklearn on the sample")
    ap.add_argument("--sinkhorn-rounds", type=int, default=BALANCE_ITERATIONS, help="Lloyd rounds of sinkhorn k-means")
    ap.add_argument("--reference-chunk", type=int, default=2048, help="rows per file fed to MoDE's reference fit")
    ap.add_argument("--reference-iter-limit", type=int, default=50, help="its iterations per file (prep_hrchy.py: 50)")
    args = ap.parse_args()
    reference, why_not = load_reference()

    mib = 2**20
    load_before = os.getloadavg()
    mem = PeakRSS()
    start = time.perf_counter()
    if args.vectors:
        vectors = load_vectors(args.vectors, args.rows)
        source = f"{args.vectors} (first {len(vectors)} finite rows, L2-normalised)"
    else:
        vectors = mixture(args.rows, args.dim, args.seed)
        source = (
            f"synthetic mixture: {TOPICS} topics, Zipf weights 1/(i+1)^{ZIPF}, same-topic cosine ~{SAME_TOPIC_COS}, "
            f"topic-topic cosine ~0.1, seed {args.seed}"
        )
    data_s = time.perf_counter() - start
    rows, dim = vectors.shape
    rng = np.random.default_rng(args.seed)
    take = min(args.fit_sample, rows)
    sample = vectors[np.sort(rng.choice(rows, size=take, replace=False))]
    base_rss = mem.reset()

    results = {}
    results["ours"] = run_ours(vectors, sample, args.clusters, args.seed, mem)
    if take < rows:
        results["sk_sample"] = run_sklearn(vectors, sample, args.clusters, args.seed, mem)
    if not args.skip_sklearn_full:
        results["sk_full"] = run_sklearn(vectors, vectors, args.clusters, args.seed, mem)
    results.update(run_sinkhorn(vectors, sample, results["ours"]["faiss"], args.sinkhorn_rounds, mem))
    if reference is not None:
        results["reference"] = run_reference(reference, vectors, sample, args.clusters, args, mem)
    mem.close()
    load_after = os.getloadavg()

    print(f"\nbench_mode_kmeans: {args.clusters} clusters, {rows} x {dim} float32 unit vectors, {os.cpu_count()} CPUs")
    print(
        f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in load_after)}: other work on the machine slows every method"
    )
    print(f"data: {source} ({data_s:.1f}s to make/load; not timed below)")
    print(f"fit sample: {take} rows drawn with numpy default_rng({args.seed}).choice, without replacement")
    print(
        f"ours:    balanced_kmeans(iterations={ITERATIONS}, balance_iterations={BALANCE_ITERATIONS}, "
        f"candidates={CANDIDATES}) on the sample, then every row to argmax(similarity - price) among its "
        f"{CANDIDATES} nearest centres (MoDE's assignment: balanced), in chunks of {CHUNK}"
    )
    print(
        f"sklearn: MiniBatchKMeans(n_clusters={args.clusters}, batch_size={SK_BATCH}, n_init=1, "
        f"max_iter={SK_MAX_ITER}, random_state={args.seed}, compute_labels=False; "
        "init, tol, max_no_improvement, reassignment_ratio at their defaults), then .predict on all rows"
    )
    print(
        f"sinkhorn: ours' own faiss centres (its time charged), Sinkhorn prices on the sample (eps "
        f"{' > '.join(f'{e:.4f}' for e in eps_schedule())}, <= {STAGE_ITERATIONS} iterations each), every row "
        "to argmax(similarity - price) over all centres; sinkhorn k-means: then "
        f"{args.sinkhorn_rounds} Lloyd rounds on the Sinkhorn assignment, prices re-solved warm each round"
    )
    if reference is None:
        print(f"reference: MoDE's balanced k-means (kernelmachine/balanced-kmeans) skipped: {why_not}")
    else:
        gib = args.reference_chunk * args.clusters * dim * 4 / 2**30
        print(
            f"reference: MoDE's balanced k-means (kernelmachine/balanced-kmeans, as MetaCLIP apps/mode/prep_hrchy.py "
            f"runs it): the sample in files of {args.reference_chunk} rows, online, cosine, iter_limit "
            f"{args.reference_iter_limit}, auction assignment; then every row to its nearest centre "
            f"(prep_inference.py); its distance tensor holds {gib:.1f} GiB per file"
        )
    print(
        f"memory: peak RSS of this process during each method (psutil, sampled every 20 ms); "
        f"{base_rss / mib:.0f} MiB resident before any method (the vectors + the sample)"
    )
    print(
        f"balance/quality: final assignment of all {rows} rows (sklearn, reference: nearest centre); "
        "cos = mean cosine of a vector to its assigned centre (higher is better)\n"
    )
    labels = {
        "ours": "ours (sample)",
        "sk_sample": "sklearn (sample)",
        "sk_full": "sklearn (all rows)",
        "sinkhorn": "sinkhorn on faiss",
        "sinkhorn_km": "sinkhorn k-means",
        "reference": "MoDE reference",
    }
    header = (
        f"{'':19} {'fit s':>7} {'assign s':>8} {'total s':>7} {'cpu/wall':>8} {'peak MiB':>8} {'+MiB':>6} "
        f"{'size CV':>7} {'max/mean':>8} {'min':>5} {'max':>6} {'empty':>5} {'cos':>6}"
    )
    print(header)
    for key, r in results.items():
        s = size_spread(r["sizes"])
        r["spread"] = s
        r["total_s"] = r["fit_s"] + r["assign_s"]
        print(
            f"{labels[key]:19} {r['fit_s']:>7.1f} {r['assign_s']:>8.1f} {r['total_s']:>7.1f} "
            f"{r['cpu_s'] / r['total_s']:>8.2f} "
            f"{r['peak'] / mib:>8.0f} {(r['peak'] - base_rss) / mib:>6.0f} {s['cv']:>7.3f} "
            f"{s['max_over_mean']:>8.2f} {s['min']:>5} {s['max']:>6} {s['empty']:>5} {r['quality']:>6.4f}"
        )
    print(
        f"(cpu/wall: this process's CPU seconds per wall second, {os.cpu_count()} at most; well below that means "
        "other processes took the cores. +MiB: peak RSS above the resident vectors)"
    )
    for key in ("sk_sample", "sk_full"):
        if key in results:
            r = results[key]
            print(f"{labels[key]}: {r['steps']} minibatch steps = {r['epochs']:.2f} epochs, init_size {r['init_size']}")
    for key in ("sinkhorn", "sinkhorn_km"):
        iterations, error = results[key]["solve"]
        print(f"{labels[key]}: last Sinkhorn solve {iterations} iterations, row-marginal L1 error {error:.4f}")
    print(f"sinkhorn k-means, on the fit sample: size CV {results['sinkhorn_km']['sample_sizes']['cv']}")
    if "reference" in results:
        fitted = results["reference"]["fitted_rows"]
        print(f"MoDE reference: fitted on {fitted} of the {take} sample rows (whole files only)")

    ours = results["ours"]
    b = ours["breakdown"]
    rounds = b["balance_rounds"]
    print(
        f"\nours, fit breakdown: faiss spherical k-means ({ITERATIONS} iterations) {b['faiss_kmeans']:.1f}s, "
        f"{len(rounds)} balanced_assign rounds {sum(rounds):.1f}s "
        f"({', '.join(f'{x:.2f}' for x in rounds)}), centroid updates + price fit ~{b['rest']:.1f}s"
    )
    capacity, priced = ours["fit_sample_sizes"]
    nearest = ours["nearest_sizes"]
    print(
        f"ours, on the fit sample: capacity-assignment size CV {capacity.get('cv')}, priced size CV {priced['cv']}; "
        f"ours on all rows with the plain nearest centre instead: size CV {nearest['cv']} "
        f"(max/mean {nearest['max_over_mean']})"
    )

    print("\nratios, ours / baseline (time: <1 means ours is faster; CV, max/mean: <1 means ours is more even)")
    baselines = [key for key in results if key != "ours"]
    for key in baselines:
        r = results[key]
        print(
            f"  vs {labels[key]:19} total time {ours['total_s'] / r['total_s']:.2f}x, "
            f"fit time {ours['fit_s'] / r['fit_s']:.2f}x, size CV {ours['spread']['cv'] / r['spread']['cv']:.2f}x, "
            f"max/mean {ours['spread']['max_over_mean'] / r['spread']['max_over_mean']:.2f}x, "
            f"cos {ours['quality'] - r['quality']:+.4f}"
        )
    # Lower is better for each (cos negated). sklearn does not try to balance: the balance and quality
    # comparisons that ours can lose are against the balanced baselines.
    metrics = {
        "total time": lambda r: r["total_s"],
        "size CV": lambda r: r["spread"]["cv"],
        "cos": lambda r: -r["quality"],
    }
    balanced = [key for key in ("sinkhorn", "sinkhorn_km", "reference") if key in results]
    strongest = {
        metric: min(baselines if metric == "total time" else balanced, key=lambda k: score(results[k]))
        for metric, score in metrics.items()
    }
    print(
        "strongest baseline per metric (size CV and cos: among the balanced ones): "
        + ", ".join(f"{metric}: {labels[key]}" for metric, key in strongest.items())
    )
    beaten = [
        f"{labels[key]} on {metric}"
        for key in baselines
        for metric, score in metrics.items()
        if score(results[key]) < score(ours)
    ]
    print(f"where a baseline beats ours: {', '.join(beaten) if beaten else 'nowhere'}")
    cmd = ["python", "bench/bench_mode_kmeans.py"]
    for flag, value, default in (
        ("--rows", args.rows, 1_000_000),
        ("--dim", args.dim, 384),
        ("--clusters", args.clusters, 1024),
        ("--fit-sample", args.fit_sample, 262_144),
        ("--seed", args.seed, 0),
    ):
        if value != default:
            cmd += [flag, str(value)]
    if args.vectors:
        cmd += ["--vectors", args.vectors]
    if args.skip_sklearn_full:
        cmd.append("--skip-sklearn-full")
    for flag, value, default in (
        ("--sinkhorn-rounds", args.sinkhorn_rounds, BALANCE_ITERATIONS),
        ("--reference-chunk", args.reference_chunk, 2048),
        ("--reference-iter-limit", args.reference_iter_limit, 50),
    ):
        if value != default:
            cmd += [flag, str(value)]
    if reference is not None:
        cmd = [f"{name}={os.environ[name]}" for name in (REFERENCE_ENV, "PYTHONPATH") if name in os.environ] + cmd
    print(f"reproduce: {' '.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
