"""Baseline for bench_mode_kmeans: MoDE's own balanced k-means, run from a fetched copy.

MoDE's reference (facebookresearch/MetaCLIP, apps/mode/prep_hrchy.py ``cluster_fine``) does not
carry its k-means: it imports ``kmeans_pytorch.KMeans`` from kernelmachine/balanced-kmeans (its
README installs that repository) and fits it online, one feature file at a time:
``KMeans(n_clusters, balanced=True).fit(F.normalize(feat), distance='cosine', iter_limit=50,
online=True, iter_k=i)``, where every round's assignment is ``auction_lap``, an auction for an
exactly equal split of the file's rows among the centres. Its inference (prep_inference.py) then
gives each row its nearest L2-normalised centre. This module runs that code unchanged; it is not
part of this repository. To run it (``numba`` is imported by the package's soft-DTW module):

    git clone https://github.com/kernelmachine/balanced-kmeans bench/out/balanced-kmeans
    pip install --no-deps --target bench/out/balanced-kmeans-deps numba llvmlite
    export BALANCED_KMEANS_DIR=bench/out/balanced-kmeans PYTHONPATH=bench/out/balanced-kmeans-deps

Its distance matrix is built by broadcasting (rows x centres x dim floats), so memory and time grow
with the chunk ("file") size times the number of centres: on a CPU it is practical only at small
sizes (it was written for a GPU).
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

ENV = "BALANCED_KMEANS_DIR"


def load_reference():
    """The ``kmeans_pytorch`` module from ``$BALANCED_KMEANS_DIR``, or a reason why it cannot be used."""
    folder = os.environ.get(ENV)
    if not folder:
        return None, f"{ENV} is not set (see bench/baseline_mode_reference.py for the two commands that set it up)"
    if not os.path.isdir(os.path.join(folder, "kmeans_pytorch")):
        return None, f"{ENV}={folder} holds no kmeans_pytorch/ (a copy of kernelmachine/balanced-kmeans is expected)"
    sys.path.insert(0, os.path.abspath(folder))
    try:
        return importlib.import_module("kmeans_pytorch"), None
    except ImportError as exc:
        return None, f"kmeans_pytorch from {folder} does not import ({exc}); numba must be importable"


def reference_fit(
    module, sample: np.ndarray, clusters: int, *, chunk: int, iter_limit: int, seed: int
) -> tuple[np.ndarray, int]:
    """Unit centres from ``cluster_fine``'s loop over ``sample`` cut into ``chunk``-row files, and
    how many rows those whole files hold (a last partial file is left out)."""
    import torch
    import torch.nn.functional as F

    if chunk < clusters:
        raise SystemExit(f"--reference-chunk {chunk}: the auction needs at least one row per centre ({clusters})")
    # The reference draws its initial centres with np.random.choice and refills empty ones with
    # torch.randint: seed both so that a run is repeatable.
    np.random.seed(seed)
    torch.manual_seed(seed)
    kmeans = module.KMeans(n_clusters=clusters, device=torch.device("cpu"), balanced=True)
    starts = range(0, len(sample) - chunk + 1, chunk)  # whole files only: a short one could hold < k rows
    for i, lo in enumerate(starts):
        feat = F.normalize(torch.from_numpy(sample[lo : lo + chunk]), dim=-1)
        kmeans.fit(feat, distance="cosine", iter_limit=iter_limit, online=True, iter_k=i, tqdm_flag=False)
    return F.normalize(kmeans.cluster_centers, dim=-1).numpy().astype(np.float32), len(starts) * chunk
