"""``curate demo``: generate the synthetic pool, run the demo recipe on it, say where things are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console

from curate.config import load_recipe
from curate.report import print_summary
from curate.reporting import write_report
from curate.runner import run_recipe


def run_demo(
    output: Path, *, samples: int, shard_size: int, seed: int, console: Console, overwrite: bool = False
) -> None:
    from curate.synth import make_pool

    pool, run = output / "pool", output / "run"
    marker = pool / "_pool.json"
    wanted = f'{{"samples": {samples}, "shard_size": {shard_size}, "seed": {seed}}}'
    if overwrite or not marker.exists() or marker.read_text() != wanted:
        shutil.rmtree(pool, ignore_errors=True)
        console.print(f"generating a {samples}-sample synthetic pool in {pool} ...")
        make_pool(str(pool), samples=samples, shard_size=shard_size, seed=seed, workers=min(2, os.cpu_count() or 1))
        marker.write_text(wanted)
    last = (samples + shard_size - 1) // shard_size - 1
    recipe = load_recipe("demo", input_path=f"{pool}/{{{0:08d}..{last:08d}}}.tar", output_path=str(run))
    result = run_recipe(recipe, overwrite=overwrite)
    print_summary(console, result)
    report = write_report(run)
    console.print(
        f"  report:  {report.path}  (open it in a browser; it works offline)", highlight=False, soft_wrap=True
    )
    console.print(
        "\nnext:\n"
        f'  curate query {run} "select step, drop_reason, count(*) from decisions group by all order by all"\n'
        f'  duckdb {run}/catalog.duckdb "select caption, lang, min_side from kept limit 5"\n'
        f"  python -c \"import webdataset as wds; print(next(iter(wds.WebDataset('{run}/shards/00000000.tar'))))\"",
        highlight=False,
        soft_wrap=True,
    )
