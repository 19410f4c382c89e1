"""Progress lines: the arithmetic of counts, rate and ETA, and what a non-terminal log gets."""

from __future__ import annotations

import io

from curate.progress import StageCounts, StageProgress


def test_the_total_is_estimated_from_the_shards_seen_and_the_eta_from_the_rate():
    counts = StageCounts(shards_total=4)
    assert counts.rows_total() is None and counts.eta_s(10.0) is None
    counts.rows_per_shard[0] = 300
    counts.rows_done = 150
    assert counts.rows_total() == 1200  # three unseen shards taken at the mean of the one seen
    assert counts.eta_s(10.0) == 70.0  # 1050 rows left at 15 rows/s
    counts.rows_per_shard[1] = 100
    assert counts.rows_total() == 400 + 2 * 200
    line = counts.line("stage 0 [basic]", 10.0)
    assert line.startswith("stage 0 [basic]: 150/800 rows, 0/4 shards, 15 rows/s, 10s elapsed, ETA ")


def test_a_stage_of_shard_tasks_counts_shards_and_says_when_it_is_done():
    counts = StageCounts(shards_total=2, shards_done=1)
    assert counts.line("stage 1 [semdedup.decide]", 5.0) == "stage 1 [semdedup.decide]: 1/2 shards, 5s elapsed, ETA 5s"
    counts.shards_done = 2
    assert counts.line("s", 65.0) == "s: 2/2 shards, 1m05s elapsed, done in 1m05s"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_it_prints_a_line_per_interval_and_one_at_the_end():
    stream, clock = io.StringIO(), Clock()
    progress = StageProgress("stage 0 [basic]", 3, stream=stream, interval_s=10.0, clock=clock)
    for second in range(1, 26):  # a summary every second for 25 seconds
        clock.now = float(second)
        progress.rows_arrived(second % 3, 10, 100)
    progress.shard_done()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 10 s, at 20 s, and the closing line: not one line per batch
    assert "250/300 rows" in lines[-1] and "1/3 shards" in lines[-1]


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = StageProgress("stage 0", 1, enabled=False, stream=stream, interval_s=0.0)
    progress.rows_arrived(0, 5, 5)
    progress.shard_done()
    progress.close()
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_live_line_per_stage_is_drawn():
    stream, clock = Terminal(), Clock()
    progress = StageProgress("stage 2 [clip_fraction.decide]", 2, stream=stream, clock=clock)
    clock.now = 4.0
    progress.rows_arrived(0, 100, 100)
    progress.shard_done()
    progress.close()
    drawn = stream.getvalue()
    assert "stage 2 [clip_fraction.decide]" in drawn and "1/2 shards" in drawn and "rows/s" in drawn
    assert "\x1b[" in drawn  # drawn with terminal control codes, not printed as plain lines
