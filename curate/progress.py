"""Progress of a run's stages, as a user reads it.

On a terminal: one live line per stage (rows, shards, rate, ETA), drawn by rich. Elsewhere (CI,
cluster logs, a pipe): one plain line per stage every ``interval_s`` seconds and one when it ends,
so a log stays short however long the run. Ray Data's own bars and its ``logging_progress`` lines
(every operator's counters, repeated every few seconds) are turned off by the executor.

Rows are counted as they arrive at the driver (the parts' summaries); a shard's row count is known
from its first part, so the total is an estimate (the mean shard size for shards not yet seen)
until every shard has been seen.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


@dataclass
class StageCounts:
    """What one stage has done so far; pure arithmetic, so it is tested without a clock."""

    shards_total: int
    shards_done: int = 0
    rows_done: int = 0
    rows_per_shard: dict[int, int] = field(default_factory=dict)

    def rows_total(self) -> int | None:
        if not self.rows_per_shard:
            return None
        known = sum(self.rows_per_shard.values())
        unseen = self.shards_total - len(self.rows_per_shard)
        return known + round(unseen * known / len(self.rows_per_shard))

    def eta_s(self, elapsed_s: float) -> float | None:
        """Seconds left at the rate so far (by rows when known, else by shards)."""
        total = self.rows_total()
        done, whole = (self.rows_done, total) if total else (self.shards_done, self.shards_total)
        if not done or elapsed_s <= 0:
            return None
        return max(0.0, (whole - done) / (done / elapsed_s))

    def line(self, label: str, elapsed_s: float) -> str:
        """One plain line; a stage of per-shard tasks counts shards only (its rows never reach the driver)."""
        total = self.rows_total()
        finished = self.shards_done >= self.shards_total
        eta = self.eta_s(elapsed_s)
        tail = f"done in {_duration(elapsed_s)}" if finished else f"ETA {_duration(eta) if eta is not None else '?'}"
        shards = f"{self.shards_done}/{self.shards_total} shards"
        if total is None:
            return f"{label}: {shards}, {_duration(elapsed_s)} elapsed, {tail}"
        rate = self.rows_done / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"{label}: {self.rows_done}/{total} rows, {shards}, {rate:,.0f} rows/s, "
            f"{_duration(elapsed_s)} elapsed, {tail}"
        )


class StageProgress:
    """Progress of one stage; ``enabled=False`` shows nothing (``ray.progress_bars: false``)."""

    def __init__(
        self,
        label: str,
        shards_total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock=time.monotonic,
    ):
        self.label = label
        self.counts = StageCounts(shards_total)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self._last_line = self.started
        self._bar: Progress | None = None
        self._task = None
        if enabled and self.stream.isatty():
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows"),
                TaskProgressColumn(),
                TextColumn("{task.fields[shards]} shards"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            # A label holds brackets ("stage 0 [basic]"), which rich would take for markup.
            self._task = self._bar.add_task(escape(label), total=None, shards=f"0/{shards_total}", rate="")

    def rows_arrived(self, shard_index: int, rows: int, shard_rows: int) -> None:
        self.counts.rows_done += rows
        self.counts.rows_per_shard[shard_index] = shard_rows
        self._update()

    def shard_done(self) -> None:
        self.counts.shards_done += 1
        self._update()

    def _update(self) -> None:
        if not self.enabled:
            return
        now = self.clock()
        elapsed = now - self.started
        if self._bar is not None:
            rate = self.counts.rows_done / elapsed if elapsed > 0 else 0.0
            self._bar.update(
                self._task,
                completed=self.counts.rows_done,
                total=self.counts.rows_total(),
                shards=f"{self.counts.shards_done}/{self.counts.shards_total}",
                rate=f"{rate:,.0f} rows/s",
            )
        elif now - self._last_line >= self.interval_s:
            self._last_line = now
            self._print(elapsed)

    def _print(self, elapsed: float) -> None:
        print(self.counts.line(self.label, elapsed), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        else:
            self._print(self.clock() - self.started)
