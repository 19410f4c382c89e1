"""The bucket manifest: what the decomposed dataset holds and how a trainer should sample it.

One JSON file beside the ``D_{k}/`` bucket folders. Per bucket: sizes, shards (paths relative to the
manifest's folder), the batch size that keeps tokens per step constant
(``batch_size_k = tokens_per_batch // 2**k``), the number of full batches, and the curriculum weight.

Curricula (the loader samples one bucket per step with probability ``odds_k * remaining_batches_k``):

* ``grow_p2``: ``odds_k = base**(max_k_present - k)``; with base 2 and six buckets the odds are
  32, 16, 8, 4, 2, 1 from shortest to longest (the reference), so short sequences come early.
* ``uniform``: ``odds_k = 1``; buckets are consumed in proportion to what is left of them.

``weight_k = odds_k * batches_k`` normalised over buckets with batches, i.e. the probability of
``k`` at the first step.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
CURRICULA = ("grow_p2", "uniform")
_TOP_FIELDS = ("version", "tokenizer", "min_k", "max_k", "shift_target", "tokens_per_batch", "curriculum", "buckets")
_BUCKET_FIELDS = ("k", "seq_len", "stored_len", "sequences", "tokens", "shards", "batch_size", "batches", "odds")


def bucket_batch_size(k: int, tokens_per_batch: int) -> int:
    """Sequences per batch of bucket ``k`` so that a batch holds ``tokens_per_batch`` prediction positions."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got k={k}")
    size = tokens_per_batch // (1 << k)
    if size < 1:
        raise ValueError(
            f"tokens_per_batch={tokens_per_batch} is smaller than one sequence of bucket k={k} ({1 << k} tokens)"
        )
    return size


def curriculum_odds(ks: list[int], base: float = 2.0) -> dict[int, float]:
    """``base**(max(ks) - k)`` per bucket: the shortest bucket gets the highest odds, the longest 1."""
    if base <= 0:
        raise ValueError(f"odds base must be > 0, got base={base}")
    if not ks:
        return {}
    top = max(ks)
    return {int(k): float(base ** (top - k)) for k in sorted(set(ks))}


def build_manifest(
    buckets: dict[int, dict],
    *,
    tokens_per_batch: int,
    min_k: int,
    max_k: int,
    shift_target: bool,
    tokenizer: str,
    curriculum: str = "grow_p2",
    odds_base: float = 2.0,
) -> dict[str, Any]:
    """The manifest dict for ``buckets`` (k -> {"sequences", "shards": [{"path", "sequences"}]})."""
    if curriculum not in CURRICULA:
        raise ValueError(f"curriculum must be one of {CURRICULA}, got curriculum={curriculum!r}")
    if not 0 <= min_k <= max_k:
        raise ValueError(f"need 0 <= min_k <= max_k, got min_k={min_k}, max_k={max_k}")
    # Checked against max_k, not only the buckets present, so a bad setting fails on any data.
    bucket_batch_size(max_k, tokens_per_batch)
    if tokens_per_batch % (1 << max_k):
        logger.warning(
            "tokens_per_batch=%d is not a multiple of 2**max_k=%d: tokens per step will differ between buckets",
            tokens_per_batch,
            1 << max_k,
        )
    ks = sorted(int(k) for k in buckets)
    for k in ks:
        if not min_k <= k <= max_k:
            raise ValueError(f"bucket k={k} is outside [min_k={min_k}, max_k={max_k}]")
    odds = curriculum_odds(ks, odds_base) if curriculum == "grow_p2" else {k: 1.0 for k in ks}
    shift = 1 if shift_target else 0
    entries = []
    for k in ks:
        info = buckets[k]
        shards = [{"path": _check_rel_path(s["path"]), "sequences": int(s["sequences"])} for s in info["shards"]]
        sequences = int(info["sequences"])
        if sequences != sum(s["sequences"] for s in shards):
            raise ValueError(
                f"bucket k={k}: sequences={sequences} but its shards hold {sum(s['sequences'] for s in shards)}"
            )
        batch_size = bucket_batch_size(k, tokens_per_batch)
        entries.append(
            {
                "k": k,
                "seq_len": 1 << k,
                "stored_len": (1 << k) + shift,
                "sequences": sequences,
                "tokens": sequences * (1 << k),
                "shards": shards,
                "batch_size": batch_size,
                "batches": sequences // batch_size,  # the incomplete last batch is dropped
                "odds": odds[k],
            }
        )
    _set_weights(entries)
    return {
        "version": MANIFEST_VERSION,
        "tokenizer": tokenizer,
        "min_k": min_k,
        "max_k": max_k,
        "shift_target": bool(shift_target),
        "tokens_per_batch": tokens_per_batch,
        "curriculum": curriculum,
        "odds_base": odds_base,
        "sequences": sum(e["sequences"] for e in entries),
        "tokens": sum(e["tokens"] for e in entries),
        "batches": sum(e["batches"] for e in entries),
        "buckets": entries,
    }


def _set_weights(entries: list[dict[str, Any]]) -> None:
    total = sum(e["odds"] * e["batches"] for e in entries)
    for e in entries:
        e["weight"] = e["odds"] * e["batches"] / total if total > 0 else 0.0


def _check_rel_path(path: str) -> str:
    # Shard paths must stay inside the dataset folder so the dataset can be moved or copied as a whole.
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"shard path must be relative to the manifest's folder, got {path!r}")
    return str(p)


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write atomically (temporary file + rename) so a reader never sees half a manifest."""
    validate_manifest(manifest)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, target)
    logger.info("wrote manifest %s: %d buckets, %d sequences", target, len(manifest["buckets"]), manifest["sequences"])


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate; raises ``ValueError`` naming the file and the problem."""
    try:
        manifest = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path}: not valid JSON: {exn}") from exn
    try:
        validate_manifest(manifest)
    except ValueError as exn:
        raise ValueError(f"{path}: {exn}") from exn
    return manifest


def validate_manifest(manifest: dict[str, Any]) -> None:
    """Check fields and internal consistency; raises ``ValueError`` naming the first problem."""
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    missing = [f for f in _TOP_FIELDS if f not in manifest]
    if missing:
        raise ValueError(f"manifest lacks fields {missing}")
    if manifest["version"] != MANIFEST_VERSION:
        raise ValueError(f"unsupported manifest version {manifest['version']!r} (expected {MANIFEST_VERSION})")
    if manifest["curriculum"] not in CURRICULA:
        raise ValueError(f"unknown curriculum {manifest['curriculum']!r}, expected one of {CURRICULA}")
    shift = 1 if manifest["shift_target"] else 0
    seen: set[int] = set()
    for b in manifest["buckets"]:
        lacking = [f for f in _BUCKET_FIELDS if f not in b]
        if lacking:
            raise ValueError(f"bucket {b.get('k')!r} lacks fields {lacking}")
        k = b["k"]
        if k in seen:
            raise ValueError(f"bucket k={k} appears twice")
        seen.add(k)
        if not manifest["min_k"] <= k <= manifest["max_k"]:
            raise ValueError(f"bucket k={k} outside [min_k={manifest['min_k']}, max_k={manifest['max_k']}]")
        expect = {
            "seq_len": 1 << k,
            "stored_len": (1 << k) + shift,
            "tokens": b["sequences"] << k,
            "batch_size": bucket_batch_size(k, manifest["tokens_per_batch"]),
            "sequences": sum(s["sequences"] for s in b["shards"]),
        }
        for field, value in expect.items():
            if b[field] != value:
                raise ValueError(f"bucket k={k}: {field}={b[field]!r}, expected {value!r}")
        if b["batches"] != b["sequences"] // b["batch_size"]:
            raise ValueError(f"bucket k={k}: batches={b['batches']!r}, expected {b['sequences'] // b['batch_size']}")
        if b["odds"] < 0:
            raise ValueError(f"bucket k={k}: odds must be >= 0, got {b['odds']!r}")
        for s in b["shards"]:
            _check_rel_path(s["path"])
