"""``shardflow data``: synthesize, inspect, verify and garbage-collect datasets."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from shardflow.storage import collect_garbage, open_dataset, parse_storage_options, redact_url

from .common import CommandFailed, StorageOption, err, human_bytes, out, parse_duration, rows_text, splits_table

data_app = typer.Typer(help="Synthesize, inspect, verify and garbage-collect datasets.", no_args_is_help=True)


@data_app.command("synth")
def data_synth(
    rows: Annotated[int, typer.Option(help="Total rows, spread evenly over the days.", min=1)],
    output: Annotated[str, typer.Option(help="Dataset URL (directory, s3://, gs://, az://, memory://).")],
    days: Annotated[int, typer.Option(help="Day partitions (day=YYYY-MM-DD/).", min=1)] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the planted model and of the rows.", min=0)] = 0,
    start_date: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")] = "2026-01-01",
    rows_per_shard: Annotated[int, typer.Option(help="Rows per Parquet shard.", min=1)] = 500_000,
    append: Annotated[bool, typer.Option(help="Add these days to an existing dataset instead of replacing it.")] = False,
    storage_option: StorageOption = None,
) -> None:
    """Write a Criteo-like click dataset whose best achievable AUC is known."""
    from shardflow.pipelines.synth import SynthConfig, synthesize

    config = SynthConfig(rows=rows, days=days, seed=seed, start_date=start_date, rows_per_shard=rows_per_shard)
    with Progress(TextColumn("[bold]synth"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("rows", total=rows, rate="")

        def on_rows(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} rows/s" if speed else "")

        manifest = synthesize(output, config, append=append, storage_options=parse_storage_options(storage_option or []),
                              on_rows=on_rows)
    info = manifest.metadata["synth"]
    auc = "undefined (one class only)" if info["optimal_auc"] is None else f"{info['optimal_auc']:.4f}"
    out.print(f"[green]committed[/] {redact_url(output)} version {manifest.version}: {manifest.rows:,} rows in "
              f"{len(manifest.shards)} shards, {human_bytes(manifest.bytes)}; optimal AUC {auc}, "
              f"click rate {info['click_rate']:.3f}")


@data_app.command("inspect")
def data_inspect(
    url: Annotated[str, typer.Argument(help="Dataset URL.", metavar="URL")],
    version: Annotated[Optional[int], typer.Option(help="A committed version (default: latest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    max_shards: Annotated[int, typer.Option(help="Shard rows to list (0: none).")] = 20,
    storage_option: StorageOption = None,
) -> None:
    """Show a committed dataset: shards, rows, bytes, splits and schema."""
    dataset = open_dataset(url, storage_options=parse_storage_options(storage_option or []), version=version)
    m = dataset.manifest
    if as_json:
        print(m.to_json(), end="")
        return
    out.print(f"[bold]{redact_url(url)}[/]  version {m.version}, created {m.created_at} by {m.writer.get('name')}")
    out.print(f"{rows_text(m)}, {len(m.shards)} shards, {human_bytes(m.bytes)}")
    out.print(splits_table(m, "splits"))
    if max_shards:
        shards = Table(title=f"shards ({min(max_shards, len(m.shards))} of {len(m.shards)})")
        for col in ("path", "format", "split", "rows", "bytes", "checksum"):
            shards.add_column(col, justify="right" if col in ("rows", "bytes") else "left")
        for s in m.shards[:max_shards]:
            shards.add_row(s.path, s.format, s.split, f"{s.rows:,}", human_bytes(s.bytes), s.checksum[:19] + "…")
        out.print(shards)
    schema = Table(title="schema")
    for col in ("column", "type", "nullable", "feature"):
        schema.add_column(col)
    for field in m.schema["fields"]:
        spec = m.feature_spec.get(field["name"], {})
        schema.add_row(field["name"], field["type"], "yes" if field["nullable"] else "no",
                       f"{spec.get('kind', '')} {spec.get('dtype', '')}")
    out.print(schema)
    for key, value in m.metadata.items():
        shown = {k: v for k, v in value.items() if not isinstance(v, (list, dict))} if isinstance(value, dict) else value
        out.print(f"[bold]{key}[/]: {json.dumps(shown)}")


@data_app.command("verify")
def data_verify(
    url: Annotated[str, typer.Argument(help="Dataset URL.", metavar="URL")],
    workers: Annotated[int, typer.Option(help="Shards read in parallel.", min=1)] = 8,
    storage_option: StorageOption = None,
) -> None:
    """Read every shard and check its size and checksum; exit 1 naming each bad shard."""
    dataset = open_dataset(url, storage_options=parse_storage_options(storage_option or []))
    m = dataset.manifest
    with Progress(TextColumn("[bold]verify"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("bytes", total=m.bytes)
        problems = dataset.verify(workers=workers, on_bytes=lambda n: bar.advance(task, n))
    for p in problems:
        err.print(f"[red]BAD[/] {p.url}: {p.problem}")
    if problems:
        raise CommandFailed(f"{redact_url(url)}: {len(problems)} of {len(m.shards)} shards are bad.")
    out.print(f"[green]ok[/] {redact_url(url)} version {m.version}: {len(m.shards)} shards, {rows_text(m)}, "
              f"{human_bytes(m.bytes)} verified")


@data_app.command("gc")
def data_gc(
    url: Annotated[str, typer.Argument(help="Dataset URL.", metavar="URL")],
    grace: Annotated[str, typer.Option(help="Leave files younger than this (e.g. 30m, 6h, 1d, 0); "
                                             "must exceed the longest write.")] = "1d",
    keep_versions: Annotated[Optional[int], typer.Option(help="Keep only the latest N versions' shards.", min=1)] = None,
    dry_run: Annotated[bool, typer.Option(help="Report what would be removed; remove nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Also run where nothing was ever committed (a first write died).")] = False,
    storage_option: StorageOption = None,
) -> None:
    """Remove orphaned temporary files and shards that no committed manifest references."""
    report = collect_garbage(url, storage_options=parse_storage_options(storage_option or []),
                             grace_seconds=parse_duration(grace), keep_versions=keep_versions, dry_run=dry_run,
                             force=force)
    verb = "would remove" if dry_run else "removed"
    for rel in report.removed:
        out.print(f"{verb} {rel}")
    for key in report.aborted_uploads:  # a writer killed mid-upload: no object, but stored (billed) parts
        out.print(f"{'would abort' if dry_run else 'aborted'} the unfinished multipart upload of {key}")
    if report.too_recent:
        out.print(f"{len(report.too_recent)} unreferenced file(s) younger than {grace} left alone")
    if report.unknown:
        out.print(f"{len(report.unknown)} file(s) shardflow did not write left alone: {', '.join(report.unknown[:5])}")
    uploads = len(report.aborted_uploads)
    aborted = f"; {'would abort' if dry_run else 'aborted'} {uploads} unfinished upload(s)" if uploads else ""
    out.print(f"[green]gc[/] {redact_url(url)}: {verb} {len(report.removed)} file(s), "
              f"{human_bytes(report.bytes_freed)}{aborted}")


