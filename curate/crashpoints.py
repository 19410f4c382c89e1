"""Named points where a test can kill the run (SIGKILL), to prove resume is exact.

``CURATE_CRASH_AT=name:n`` kills the process the n-th time it passes ``name`` (n defaults to
1). Unset, a crash point costs one dict lookup. Names are listed in ``CRASH_POINTS``.
"""

from __future__ import annotations

import os
import signal

CRASH_POINTS = (
    "part_tallied",  # the driver recorded a batch's parts; shards may be unfinished
    "shard_files_written",  # a shard's files are written under temporary names
    "shard_renamed",  # a shard's files are renamed into place; its done-marker is not written
    "before_run_summary",  # every shard is done; sizes.json, stats and catalog are not written
)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("CURATE_CRASH_AT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
