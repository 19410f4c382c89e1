"""Sample identity: a 128-bit uid as 32 lowercase hex chars, as DataComp uses.

Pools without a uid get one derived from what identifies the sample independently of how it
was downloaded (url and caption; image bytes when there is no url), never from ``key``.
"""

from __future__ import annotations

import hashlib
import re

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
