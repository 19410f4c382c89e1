"""Sample identity: a 128-bit uid as 32 lowercase hex chars, as DataComp uses.

Pools without a uid get one derived from what identifies the sample independently of how it
was downloaded (url and caption; image bytes when there is no url), never from ``key``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def derive_uid(url: str | None, caption: str | None, image_sha256: str | None = None) -> str:
    h = hashlib.sha256()
    if url:
        h.update(b"url\x00" + url.encode("utf-8", "surrogatepass"))
    elif image_sha256:
        h.update(b"img\x00" + image_sha256.encode())
    h.update(b"\x00cap\x00" + (caption or "").encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def normalize_uid(value: object) -> str | None:
    """Accept a uid as hex string (any case, with or without 0x) or int; None if not a uid."""
    if value is None:
        return None
    if isinstance(value, int):
        return f"{value:032x}" if 0 <= value < 2**128 else None
    text = str(value).strip().lower().removeprefix("0x")
    return text if _UID_RE.match(text) else None


def uid_to_u64_pair(uid: str) -> tuple[int, int]:
    """Split a uid into DataComp's (high 64 bits, low 64 bits)."""
    value = int(uid, 16)
    return value >> 64, value & (2**64 - 1)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-mixed 64-bit hash of each value (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def seeded_uniform(uids: Sequence[str], seed: int, salt: int | np.ndarray = 0) -> np.ndarray:
    """A uniform draw in [0, 1) per uid, fixed by (uid, seed, salt): the same sample gets the same
    draw on every worker, attempt and resume, whatever the batch boundaries. ``salt`` (a scalar or
    an int array aligned with ``uids``) gives independent draws for one sample, e.g. one per entry.
    """
    keys = np.fromiter((int(u[:16], 16) ^ int(u[16:32], 16) for u in uids), dtype=np.uint64, count=len(uids))
    salts = np.broadcast_to(np.asarray(salt, dtype=np.int64).astype(np.uint64), keys.shape)
    seed_key = _splitmix64(np.array([seed], dtype=np.int64).astype(np.uint64))[0]
    h = _splitmix64(_splitmix64(keys ^ seed_key) ^ _splitmix64(salts))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
