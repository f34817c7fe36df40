"""`-o table|json|yaml` for every read command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import yaml
from tabulate import tabulate

FORMATS = ("table", "json", "yaml")


def add_output_flag(p: argparse.ArgumentParser, default: str = "table") -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default=default,
                   help="output format (default: %(default)s)")


def emit(data: Any, fmt: str, *, table: str | None = None, out: TextIO = sys.stdout) -> None:
    """Print `data` as JSON/YAML, or print the pre-formatted `table` text for humans."""
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    elif fmt == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        out.write(table if table is not None else yaml.safe_dump(data, sort_keys=False))


def table_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               headers: Sequence[str] | None = None) -> str:
    body = [[r.get(c, "") for c in columns] for r in rows]
    return tabulate(body, headers=list(headers or [c.upper() for c in columns]),
                    tablefmt="plain") + "\n"
