"""``curate query``: SQL over a run's catalog, printed as a table or written as csv/json/parquet."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from curate.catalog import connect


def run_query(
    run: str, sql: str, *, fmt: str = "table", output: str | None = None, console: Console | None = None
) -> None:
    con = connect(run)
    try:
        if fmt == "parquet":
            if not output:
                raise ValueError("--format parquet: an --output file is required")
            con.execute(f"COPY ({sql}) TO '{output.replace(chr(39), chr(39) * 2)}' (FORMAT parquet)")
            return
        rel = con.sql(sql)
        if rel is None:
            return
        columns, rows = rel.columns, rel.fetchall()
    finally:
        con.close()
    out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115 - closed below
    try:
        if fmt == "csv":
            import csv

            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows(rows)
        elif fmt == "json":
            for row in rows:
                out.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
        else:
            table = Table(*columns)
            for row in rows:
                table.add_row(*("NULL" if v is None else str(v) for v in row))
            (console or Console()).print(table) if not output else Console(file=out).print(table)
            if console is not None and not output:
                console.print(f"({len(rows)} rows)")
    finally:
        if output:
            out.close()
