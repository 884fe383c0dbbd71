"""What every command group shares: consoles, the storage-option flag, errors, formatting."""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["CommandFailed", "StorageOption", "err", "human_bytes", "out", "parse_duration", "rows_text",
           "splits_table"]

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width

StorageOption = Annotated[
    Optional[list[str]],
    typer.Option("--storage-option", "-o", metavar="KEY=VALUE",
                 help="Filesystem option (endpoint_url, key, secret, anon, ...); repeatable; dotted keys nest."),
]


class CommandFailed(Exception):
    """A command ran and found problems; its message is the summary, exit code 1."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}. Expected a number with an optional unit s, m, h or d (e.g. 1h).",
                                 param_hint="'--grace'")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def rows_text(manifest: Any) -> str:
    """Rows of the dataset; when it holds several formats, each has all the rows once."""
    formats = sorted({s.format for s in manifest.shards})
    if len(formats) <= 1:
        return f"{manifest.rows:,} rows"
    per_format = sum(s.rows for s in manifest.shards if s.format == formats[0])
    return f"{per_format:,} rows in each of {len(formats)} formats ({', '.join(formats)})"


def splits_table(manifest: Any, title: str) -> Table:
    """Shards, rows and bytes per split and format (each format holds the same rows)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for shard in manifest.shards:
        agg = groups.setdefault((shard.split, shard.format), [0, 0, 0])
        agg[0] += 1
        agg[1] += shard.rows
        agg[2] += shard.bytes
    table = Table(title=title)
    for col in ("split", "format", "shards", "rows", "bytes"):
        table.add_column(col, justify="left" if col in ("split", "format") else "right")
    for (split, fmt), (count, rows, size) in groups.items():
        table.add_row(split, fmt, f"{count:,}", f"{rows:,}", human_bytes(size))
    return table


