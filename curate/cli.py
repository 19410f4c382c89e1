"""The ``curate`` command line: make-pool, run, query, catalog, report, status, inspect, demo,
validate, plan, list-steps, subset, export-npz, mode-weights."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rich.console import Console

console = Console(stderr=False)
err = Console(stderr=True)


def _cmd_make_pool(args: argparse.Namespace) -> int:
    from curate.synth import FaultRates, make_pool

    faults = FaultRates(**_parse_rates(args.fault_rate)) if args.fault_rate else None
    summary = make_pool(
        args.output,
        samples=args.samples,
        shard_size=args.shard_size,
        seed=args.seed,
        faults=faults,
        workers=args.workers,
        text_rate=args.text_rate,
        repeat_rate=args.repeat_rate,
    )
    console.print(f"wrote {args.samples} samples to {args.output}: {summary}")
    return 0


def _parse_rates(items: list[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--fault-rate: value {item!r} is not of the form name=rate")
        try:
            rates[name] = float(value)
        except ValueError:
            raise SystemExit(f"--fault-rate {name}: value {value!r} is not a number") from None
    return rates


def _cmd_run(args: argparse.Namespace) -> int:
    from curate.config import load_recipe
    from curate.report import print_summary
    from curate.runner import run_recipe

    recipe = load_recipe(args.recipe, args.set, input_path=args.input, output_path=args.output)
    if args.ray_address:
        recipe = recipe.model_copy(update={"ray": recipe.ray.model_copy(update={"address": args.ray_address})})
    if args.no_progress:
        recipe = recipe.model_copy(update={"ray": recipe.ray.model_copy(update={"progress_bars": False})})
    result = run_recipe(recipe, overwrite=args.overwrite)
    print_summary(console, result)
    return 0


def _cmd_mode_weights(args: argparse.Namespace) -> int:
    import json

    from curate.mode_weights import mode_weights, read_classes

    _local_run_only("mode-weights", args.run)
    result = mode_weights(
        args.run,
        read_classes(args.classes),
        step_id=args.step,
        template=args.template,
        temperature=args.temperature,
        model=args.model,
    )
    payload = json.dumps(result.to_json(), indent=2)
    if args.output:
        Path(args.output).write_text(payload)
    if args.format == "json":
        console.print_json(payload)
    else:
        console.print(f"MoDE step {result.step_id!r}, {len(result.classes)} class names, encoder {result.model}")
        console.print("task weights per expert: " + ", ".join(f"{e}: {w:.4f}" for e, w in enumerate(result.task)))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from curate.config import apply_overrides, load_recipe_data, validate_recipe

    recipe = validate_recipe(apply_overrides(load_recipe_data(args.recipe), args.set))
    console.print(
        f"{args.recipe}: valid recipe {recipe.name!r} with steps "
        f"{', '.join(s.step_id for s in recipe.steps) or '(none)'}"
    )
    if args.plan:
        _print_plan(recipe)
    return 0


def _print_plan(recipe) -> None:
    from curate.plan import compile_plan

    console.print(compile_plan(recipe).describe(), highlight=False, soft_wrap=True, markup=False)


def _cmd_plan(args: argparse.Namespace) -> int:
    from curate.config import apply_overrides, load_recipe_data, validate_recipe

    _print_plan(validate_recipe(apply_overrides(load_recipe_data(args.recipe), args.set)))
    return 0


def _cmd_list_steps(args: argparse.Namespace) -> int:
    from curate.registry import get_layout, get_step, layout_names, reader_names, step_names

    for name in step_names():
        entry = get_step(name)
        params = ", ".join(f"{k}={f.default!r}" for k, f in entry.params_model.model_fields.items())
        kind = "global (a barrier), " if entry.global_decision else ""
        console.print(f"[bold]{name}[/bold]: {entry.summary}\n    {kind}rows: {entry.rows}; params: {params}")
    console.print(f"input formats: auto, urls, {', '.join(reader_names())}")
    for name in layout_names():
        console.print(f"layout [bold]{name}[/bold]: {get_layout(name).summary}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from curate.query import run_query

    run_query(args.run, args.sql, fmt=args.format, output=args.output, console=console)
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from curate.catalog import build_catalog

    console.print(f"rebuilt {build_catalog(args.run)}")
    return 0


def _cmd_subset(args: argparse.Namespace) -> int:
    import json

    from curate.subset import export_run_subset, subset_report

    if args.action == "export":
        count = export_run_subset(args.run, args.path, where=args.where)
        console.print(f"wrote {count} uids (DataComp u8,u8, sorted) to {args.path}")
    else:
        console.print_json(json.dumps(subset_report(args.run, args.path)))
    return 0


def _cmd_export_npz(args: argparse.Namespace) -> int:
    from curate.export_npz import export_npz

    rename = dict(item.split("=", 1) for item in args.rename)
    n = export_npz(args.run, args.output, where_keep=args.kept_only, rename=rename)
    console.print(f"wrote {n} parquet + npz pairs to {args.output}")
    return 0


def _local_run_only(command: str, run: str) -> None:
    """``report`` and ``inspect`` read a local run folder (images, artifacts, HTML beside it)."""
    from curate.run_storage import RunStorage
    from curate.rundir import RunFolderError

    if not RunStorage(run).is_local:
        raise RunFolderError(
            f"curate {command}: RUN {run!r} is on an object store, which curate {command} does not read yet; "
            "copy the run folder to a local path first (e.g. `aws s3 sync`), or use `curate query` / `curate status`"
        )


def _cmd_report(args: argparse.Namespace) -> int:
    from curate.reporting import write_report

    _local_run_only("report", args.run)

    result = write_report(args.run, args.output)
    console.print(
        f"wrote {result.path} ({result.bytes / 1e6:.2f} MB, sections: {', '.join(result.sections)}) "
        f"in {result.seconds:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from curate.run_status import describe, run_status, status_json

    status = run_status(args.run)
    if args.format == "json":
        print(status_json(status))
    else:
        for line in describe(status):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from curate.inspect_sample import describe, inspect_sample, save_image

    _local_run_only("inspect", args.run)
    report = inspect_sample(args.run, args.uid)
    if args.format == "json":
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        for line in describe(report):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    if args.save_image:
        n = save_image(args.run, args.uid, args.save_image)
        console.print(f"wrote its image ({n} bytes, as stored in the input) to {args.save_image}", highlight=False)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from curate.demo import run_demo

    run_demo(
        Path(args.output),
        samples=args.samples,
        shard_size=args.shard_size,
        seed=args.seed,
        console=console,
        overwrite=args.overwrite,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-pool", help="generate the synthetic shapes-world pool (img2dataset format)")
    p.add_argument("--output", required=True)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--fault-rate",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="override one fault rate, e.g. --fault-rate corrupt_image=0.05",
    )
    p.add_argument(
        "--text-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of scenes with a short English word on a sign, for OCR (ground truth: gt.text); default 0",
    )
    p.add_argument(
        "--repeat-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="chance that each shape after a scene's first repeats its colour and kind (GBC compositions); default 0",
    )
    p.set_defaults(func=_cmd_make_pool)

    p = sub.add_parser("run", help="run a recipe (a YAML path or a built-in name) on a pool")
    p.add_argument("recipe")
    p.add_argument("--input", help="input shards: brace expansion, globs, fsspec URLs (overrides input.path)")
    p.add_argument("--output", help="run folder (overrides output.path)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a recipe field, e.g. --set steps.basic.params.min_side=128",
    )
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder holding another recipe's run")
    p.add_argument("--no-progress", action="store_true", help="hide the per-stage progress lines")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="validate a recipe without running it")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--plan", action="store_true", help="also print the plan of stages")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plan", help="print a recipe's plan: stages, their steps, rows, resources, reads and writes")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("list-steps", help="list registered steps and their parameters")
    p.set_defaults(func=_cmd_list_steps)

    p = sub.add_parser(
        "query", help="run SQL on a run's catalog (views: samples, sidecars, decisions, kept, shards, steps)"
    )
    p.add_argument("run")
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--output", help="write the result to this file (required for parquet)")
    p.set_defaults(func=_cmd_query)

    p = sub.add_parser("catalog", help="rebuild a run's catalog.duckdb (e.g. after moving the folder)")
    p.add_argument("run")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("subset", help="export a run's kept uids as a DataComp subset, or compare a subset to a run")
    p.add_argument("action", choices=["export", "report"])
    p.add_argument("run")
    p.add_argument("path", help="the .npy subset file (u8,u8) to write (export) or read (report)")
    p.add_argument("--where", default="keep", help="SQL condition on the samples view (export)")
    p.set_defaults(func=_cmd_subset)

    p = sub.add_parser("export-npz", help="export a run as DataComp-style metadata: parquet + row-aligned npz")
    p.add_argument("run")
    p.add_argument("output")
    p.add_argument("--kept-only", action="store_true", help="only the rows the run kept")
    p.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OURS=THEIRS",
        help="e.g. --rename clip_image_emb=l14_img --rename clip_score=clip_l14_similarity_score",
    )
    p.set_defaults(func=_cmd_export_npz)

    p = sub.add_parser("mode-weights", help="MoDE ensemble weights of the experts for a task's class names")
    p.add_argument("run", help="a finished run whose recipe has a mode step")
    p.add_argument("--classes", required=True, help="a file (one name per line, or a JSON list) or 'cat,dog,...'")
    p.add_argument("--step", help="the mode step's id, if the recipe has several")
    p.add_argument("--template", default="{}", help="how a class name is phrased, e.g. 'a photo of a {}'")
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature over the fine centres")
    p.add_argument("--model", help="text encoder, if the run's recipe has no text_embed step for the column")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--output", help="also write the weights as JSON to this file")
    p.set_defaults(func=_cmd_mode_weights)

    p = sub.add_parser("report", help="write a self-contained HTML report of a finished run")
    p.add_argument("run")
    p.add_argument("--output", help="the HTML file to write (default RUN/report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("status", help="where a run stands: stages and shards done, what a re-run redoes, failures")
    p.add_argument("run")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("inspect", help="everything about one sample: captions, scores, decisions, clusters, graph")
    p.add_argument("run")
    p.add_argument("uid")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--save-image", metavar="FILE", help="also write the sample's image (as stored in the input)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("demo", help="make a synthetic pool and run the demo recipe on it")
    p.add_argument("--output", default="demo")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from curate.config import RecipeError
    from curate.readers.base import InputError
    from curate.rundir import RunFolderError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (RecipeError, InputError, RunFolderError, FileNotFoundError, ValueError) as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, markup=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
