"""Dataset decomposition (apple/ml-dataset-decomposition): cut one tokenized document into power-of-two chunks.

Pure functions, no I/O. The rules, for a document of ``L`` tokens (the caller has already appended
the end-of-text token):

* Prediction positions. With ``shift_target`` (the default) position ``i`` predicts token ``i + 1``, so
  the document has ``n = L - 1`` positions (``0`` when ``L == 0``); without it, ``n = L``.
* Over-long documents. While ``n >= 2**max_k`` a chunk of ``2**max_k`` positions is emitted.
* The rest, ``r < 2**max_k``, is split greedily following its binary representation, largest power
  first, keeping only powers ``2**k`` with ``k >= min_k``.
* The remainder, ``r mod 2**min_k < 2**min_k`` positions, is dropped; it is always the *end* of the
  document (``dropped_positions``).
* Chunks are contiguous from offset 0, in order. Chunk ``c`` covers positions
  ``[c.offset, c.offset + 2**c.k)`` and stores ``tokens[c.offset : c.offset + 2**c.k + shift]``: with
  ``shift_target`` the last stored token is only the target of the last position, and it is also the
  first token of the next chunk (consecutive chunks overlap by exactly one token), so every kept
  prediction position lands in exactly one chunk.
* Dropped *tokens* vs positions: when at least one chunk is emitted, the kept tokens are
  ``tokens[: L - dropped_positions]``. When no chunk is emitted (``n < 2**min_k``) every token is dropped,
  including the lone final token that was never a prediction position (``dropped_tokens``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# 2**20 positions per chunk is already far beyond any context length we train; a larger bound
# almost certainly means a typo (e.g. a length passed where an exponent was expected).
MAX_ALLOWED_K = 20


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document: ``2**k`` prediction positions starting at token ``offset``."""

    index: int  # chunk number within the document, 0-based, in offset order
    offset: int  # first token of the chunk in the document's token sequence
    k: int  # bucket: the chunk has 2**k prediction positions

    @property
    def seq_len(self) -> int:
        return 1 << self.k


@dataclass(frozen=True)
class DecomposeConfig:
    """Bucket range and target convention. Image-caption data uses small ``k``; LLM text uses 8..13."""

    min_k: int = 3
    max_k: int = 8
    shift_target: bool = True  # each chunk carries one extra token, the target of its last position

    def __post_init__(self) -> None:
        for name in ("min_k", "max_k"):
            value = getattr(self, name)
            # bool is an int subclass; True as an exponent is a bug, not a request for k=1.
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"DecomposeConfig.{name} must be an int, got {value!r}")
            if not 0 <= value <= MAX_ALLOWED_K:
                raise ValueError(f"DecomposeConfig.{name} must be in [0, {MAX_ALLOWED_K}], got {name}={value}")
        if self.min_k > self.max_k:
            raise ValueError(f"DecomposeConfig.min_k must be <= max_k, got min_k={self.min_k} > max_k={self.max_k}")
        if not isinstance(self.shift_target, (bool, np.bool_)):
            raise TypeError(f"DecomposeConfig.shift_target must be a bool, got shift_target={self.shift_target!r}")

    @property
    def shift(self) -> int:
        """Extra stored tokens per chunk: 1 with ``shift_target`` else 0."""
        return 1 if self.shift_target else 0

    def stored_len(self, k: int) -> int:
        return (1 << k) + self.shift


def _check_length(num_tokens: int) -> int:
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)):
        raise TypeError(f"num_tokens must be an int, got {num_tokens!r}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got num_tokens={num_tokens}")
    return int(num_tokens)


def prediction_positions(num_tokens: int, config: DecomposeConfig) -> int:
    """``n``: how many tokens of the document are predicted (``L - 1`` with a shifted target, else ``L``)."""
    length = _check_length(num_tokens)
    return max(length - config.shift, 0)


def decompose_length(num_tokens: int, config: DecomposeConfig) -> list[Chunk]:
    """The chunks of a document of ``num_tokens`` tokens, contiguous from offset 0 (see module docstring)."""
    remaining = prediction_positions(num_tokens, config)
    chunks: list[Chunk] = []
    offset = 0
    top = 1 << config.max_k
    # Full 2**max_k pieces first: arithmetic, not a loop, so a huge document costs O(#chunks) only once.
    full, remaining = divmod(remaining, top)
    for _ in range(full):
        chunks.append(Chunk(index=len(chunks), offset=offset, k=config.max_k))
        offset += top
    # Then the binary representation of the rest, highest bit first; bits below min_k are the remainder.
    for k in range(config.max_k - 1, config.min_k - 1, -1):
        if remaining >> k & 1:
            chunks.append(Chunk(index=len(chunks), offset=offset, k=k))
            offset += 1 << k
    return chunks


def dropped_positions(num_tokens: int, config: DecomposeConfig) -> int:
    """Prediction positions that land in no chunk: ``n mod 2**min_k``, always at the end of the document."""
    n = prediction_positions(num_tokens, config)
    return n % (1 << config.min_k)


def dropped_tokens(num_tokens: int, config: DecomposeConfig) -> int:
    """Tokens stored in no chunk: ``dropped_positions``, or all ``L`` tokens when no chunk is emitted."""
    length = _check_length(num_tokens)
    n = prediction_positions(length, config)
    covered = n - n % (1 << config.min_k)
    return length if covered == 0 else length - covered - config.shift


def chunk_tokens(tokens: Sequence[int] | np.ndarray, chunk: Chunk, config: DecomposeConfig) -> np.ndarray:
    """The tokens stored for ``chunk``: ``tokens[offset : offset + 2**k + shift]`` as int32 (a view when possible)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    stop = chunk.offset + config.stored_len(chunk.k)
    if chunk.offset < 0 or stop > arr.shape[0]:
        raise ValueError(
            f"chunk {chunk} needs tokens[{chunk.offset}:{stop}] but the document has {arr.shape[0]} tokens"
        )
    piece = arr[chunk.offset : stop]
    if piece.dtype != np.int32:
        if piece.size and not np.issubdtype(piece.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {piece.dtype}")
        # Refuse ids that would wrap around in int32 instead of silently corrupting the data.
        info = np.iinfo(np.int32)
        if piece.size and (piece.min() < info.min or piece.max() > info.max):
            raise ValueError(f"token ids outside the int32 range in chunk {chunk}")
        piece = piece.astype(np.int32)
    return piece
