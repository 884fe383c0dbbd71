"""The ``shardflow`` command: wires storage, pipelines and training together, nothing more."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from shardflow.storage import (
    ShardflowError,
    collect_garbage,
    open_dataset,
    parse_storage_options,
    redact_url,
)
from shardflow.storage.urls import redact_text

app = typer.Typer(help="shardflow: shard, augment and stream big training data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Synthesize, inspect, verify and garbage-collect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pipeline_app = typer.Typer(help="Shard, augment and write training datasets with Beam or Dask.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")

out = Console()
err = Console(stderr=True)

StorageOption = Annotated[
    Optional[list[str]],
    typer.Option("--storage-option", "-o", metavar="KEY=VALUE",
                 help="Filesystem option (endpoint_url, key, secret, anon, ...); repeatable; dotted keys nest."),
]


class CommandFailed(Exception):
    """A command ran and found problems; its message is the summary, exit code 1."""


@app.callback()
def _root(log_level: Annotated[str, typer.Option(help="Logging level for machine-readable logs on stderr.")] = "WARNING") -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}. Expected a number with an optional unit s, m, h or d (e.g. 1h).",
                                 param_hint="'--grace'")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _rows_text(manifest: Any) -> str:
    """Rows of the dataset; when it holds several formats, each has all the rows once."""
    formats = sorted({s.format for s in manifest.shards})
    if len(formats) <= 1:
        return f"{manifest.rows:,} rows"
    per_format = sum(s.rows for s in manifest.shards if s.format == formats[0])
    return f"{per_format:,} rows in each of {len(formats)} formats ({', '.join(formats)})"


def _splits_table(manifest: Any, title: str) -> Table:
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
        table.add_row(split, fmt, f"{count:,}", f"{rows:,}", _human_bytes(size))
    return table


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
              f"{len(manifest.shards)} shards, {_human_bytes(manifest.bytes)}; optimal AUC {auc}, "
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
    out.print(f"{_rows_text(m)}, {len(m.shards)} shards, {_human_bytes(m.bytes)}")
    out.print(_splits_table(m, "splits"))
    if max_shards:
        shards = Table(title=f"shards ({min(max_shards, len(m.shards))} of {len(m.shards)})")
        for col in ("path", "format", "split", "rows", "bytes", "checksum"):
            shards.add_column(col, justify="right" if col in ("rows", "bytes") else "left")
        for s in m.shards[:max_shards]:
            shards.add_row(s.path, s.format, s.split, f"{s.rows:,}", _human_bytes(s.bytes), s.checksum[:19] + "…")
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
    out.print(f"[green]ok[/] {redact_url(url)} version {m.version}: {len(m.shards)} shards, {_rows_text(m)}, "
              f"{_human_bytes(m.bytes)} verified")


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
                             grace_seconds=_parse_duration(grace), keep_versions=keep_versions, dry_run=dry_run,
                             force=force)
    verb = "would remove" if dry_run else "removed"
    for rel in report.removed:
        out.print(f"{verb} {rel}")
    if report.too_recent:
        out.print(f"{len(report.too_recent)} unreferenced file(s) younger than {grace} left alone")
    if report.unknown:
        out.print(f"{len(report.unknown)} file(s) shardflow did not write left alone: {', '.join(report.unknown[:5])}")
    out.print(f"[green]gc[/] {redact_url(url)}: {verb} {len(report.removed)} file(s), {_human_bytes(report.bytes_freed)}")


def _parse_split(text: str) -> dict[str, float]:
    """``train=0.8,eval=0.2`` or ``0.8,0.1,0.1`` (train, eval, test)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return dict(zip(("train", "eval", "test"), (float(p) for p in parts)))
    except ValueError:
        raise typer.BadParameter(f"{text!r}. Expected e.g. train=0.8,eval=0.2 or 0.8,0.1,0.1.",
                                 param_hint="'--split'") from None


@pipeline_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline_run(
    ctx: typer.Context,
    config_file: Annotated[Optional[str], typer.Argument(help="YAML config; flags override it.", metavar="CONFIG.yaml")] = None,
    input: Annotated[Optional[str], typer.Option(help="Input URL: file, glob, directory or dataset.")] = None,
    output: Annotated[Optional[str], typer.Option(help="Output dataset URL.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="beam or dask.")] = None,
    runner: Annotated[Optional[str], typer.Option(help="Beam runner (DirectRunner, DataflowRunner, ...).")] = None,
    dask_address: Annotated[Optional[str], typer.Option(help="Existing Dask scheduler, tcp://host:8786.")] = None,
    formats: Annotated[Optional[str], typer.Option(help="parquet, tfrecord or both: parquet,tfrecord.")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Shards of the largest split.", min=1)] = None,
    rows_per_shard: Annotated[Optional[int], typer.Option(help="Target rows per shard.", min=1)] = None,
    bytes_per_shard: Annotated[Optional[int], typer.Option(help="Target bytes per shard.", min=1)] = None,
    label: Annotated[Optional[str], typer.Option(help="Label column (rows without one are bad).")] = None,
    split: Annotated[Optional[str], typer.Option(help="train=0.8,eval=0.2[,test=...].")] = None,
    split_key: Annotated[Optional[str], typer.Option(help="Column whose hash decides the split (default: the row).")] = None,
    augment_copies: Annotated[Optional[int], typer.Option(help="Augmented copies per training row.", min=0)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of split, shuffle and augmentation.", min=0)] = None,
    max_bad_fraction: Annotated[Optional[float], typer.Option(help="Fail above this fraction of bad rows.")] = None,
    input_format: Annotated[Optional[str], typer.Option(help="csv, jsonl or parquet (default: by extension).")] = None,
    storage_option: StorageOption = None,
) -> None:
    """Parse, validate, split, shard, augment and write a committed dataset.

    Unknown --options are passed to Beam (--project, --region, --temp_location, --dry_run=True ...).
    """
    from shardflow.pipelines.config import load_config
    from shardflow.pipelines.run import DEAD_LETTER_DIR, run_pipeline

    overrides: dict[str, Any] = {
        "input": input, "output": output, "engine": engine, "runner": runner, "dask_address": dask_address,
        "formats": [f.strip() for f in formats.split(",")] if formats else None, "shards": shards,
        "rows_per_shard": rows_per_shard, "bytes_per_shard": bytes_per_shard, "label": label, "seed": seed,
        "max_bad_fraction": max_bad_fraction, "input_format": input_format,
        "split": {**(_parse_split(split) if split else {}), **({"key": split_key} if split_key else {})} or None,
        "augment": {"copies": augment_copies} if augment_copies is not None else None,
        "storage_options": parse_storage_options(storage_option or []) or None,
    }
    passthrough = list(ctx.args)
    if config_file and config_file.startswith("-"):  # an unknown option landed in the positional slot
        passthrough.insert(0, config_file)
        config_file = None
    if passthrough:
        overrides["beam_options"] = passthrough
    config = load_config(config_file, overrides)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
                  TextColumn("{task.fields[info]}"), console=err, transient=True) as bar:
        tasks: dict[str, Any] = {}
        totals = {"rows": 0, "bad": 0}

        def progress(event: str, **counts: int) -> None:
            if event == "plan":
                tasks["file"] = bar.add_task(f"read ({config.engine})", total=counts["files"], info="")
                tasks["shard"] = bar.add_task("write shards", total=counts["shards"], info="")
            elif event in tasks:
                bar.advance(tasks[event])
                if event == "file":
                    totals["rows"] += counts.get("rows", 0)
                    totals["bad"] += counts.get("bad", 0)
                    elapsed = bar.tasks[tasks["file"]].elapsed or 1e-9
                    bar.update(tasks["file"], info=f"{totals['rows']:,} rows, {totals['bad']:,} bad, "
                                                   f"{totals['rows'] / elapsed:,.0f} rows/s")

        summary = run_pipeline(config, progress=progress)
    if summary.dry_run:
        out.print(f"[green]dry run[/]: built the {config.runner} job for {redact_url(config.output)}; nothing written")
        return
    out.print(_splits_table(summary.manifest, f"{redact_url(config.output)} version {summary.manifest.version}"))
    out.print(f"[green]committed[/]: read {summary.rows_read:,} rows, {summary.bad_rows:,} bad "
              f"(in {DEAD_LETTER_DIR}/), in {summary.seconds:.1f} s ({summary.rows_read / max(summary.seconds, 1e-9):,.0f} rows/s)")


ClusterChoice = Annotated[Optional[str], typer.Option(help="none (this process) or local (a real ps/worker cluster "
                                                       "on 127.0.0.1).")]


@app.command("train")
def train_command(
    config_file: Annotated[Optional[str], typer.Argument(metavar="[CONFIG.yaml]", help="Training config (YAML).")] = None,
    data: Annotated[Optional[str], typer.Option(help="URL of a committed dataset.")] = None,
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Checkpoint URL (local, s3://, gs://, az://).")] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Local directory for logs, TensorBoard, curves, export.")] = None,
    export_dir: Annotated[Optional[str], typer.Option(help="Where the SavedModel goes (default: RUN_DIR/export).")] = None,
    cluster: ClusterChoice = None,
    tf_config: Annotated[bool, typer.Option("--tf-config", help="Coordinate the cluster TF_CONFIG describes.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Workers of a local cluster.", min=1)] = None,
    ps: Annotated[Optional[int], typer.Option(help="Parameter servers of a local cluster.", min=1)] = None,
    strategy: Annotated[Optional[str], typer.Option(help="auto, parameter_server, tpu, mirrored or default.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total.", min=1)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs over the training split (when --steps is not given).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per step and worker (default 1024).", min=1)] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate (default 0.4; scale it with the batch size).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adagrad, adam, sgd or ftrl.")] = None,
    data_format: Annotated[Optional[str], typer.Option("--format", help="auto, tfrecord or parquet.")] = None,
    label: Annotated[Optional[str], typer.Option(help="Label column (default: the one the pipeline recorded).")] = None,
    model: Annotated[Optional[str], typer.Option(help="A user model, 'module:function'.")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Steps between evaluations.", min=1)] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Steps between checkpoints.", min=1)] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option(help="Committed checkpoints to keep.", min=1)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the input shuffle.", min=0)] = None,
    storage_option: StorageOption = None,
) -> None:
    """Train on a committed dataset; resume from the latest committed checkpoint; evaluate and export."""
    from shardflow.training.cluster import EXIT_RESTART, LocalCluster
    from shardflow.training.config import load_train_config
    from shardflow.training.strategy import parse_tf_config

    if tf_config and cluster not in (None, "tf-config"):
        raise typer.BadParameter("give --tf-config or --cluster, not both", param_hint="'--tf-config'")
    if cluster not in (None, "none", "local"):
        raise typer.BadParameter(f"{cluster!r}. Expected none or local.", param_hint="'--cluster'")
    overrides: dict[str, Any] = {
        "data": data, "checkpoint_dir": checkpoint_dir, "run_dir": run_dir, "export_dir": export_dir,
        "cluster": "tf-config" if tf_config else cluster, "workers": workers, "ps": ps, "strategy": strategy,
        "steps": steps, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "optimizer": optimizer, "format": data_format, "label": label, "eval_every": eval_every, "seed": seed,
        "model": {"function": model} if model else None,
        "checkpoint": {k: v for k, v in (("every_steps", checkpoint_every), ("keep", keep_checkpoints)) if v} or None,
        "storage_options": parse_storage_options(storage_option or []) or None,
    }
    config = load_train_config(config_file, overrides)
    if config.cluster == "local":
        open_dataset(config.data, storage_options=config.storage_options)  # fail here, not in every task
        try:
            code = LocalCluster(config).run()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the cluster is stopped by now
            err.print(f"interrupted: every process of the local cluster stopped; resume from the last committed "
                      f"checkpoint in {redact_url(config.resolved_checkpoint_dir())} by running the same command",
                      highlight=False, markup=False)
            raise typer.Exit(130) from None
        if code:
            raise CommandFailed(f"training failed (coordinator exit code {code}); task logs are in {config.run_dir}/logs")
        return
    spec = parse_tf_config() if config.cluster == "tf-config" else None
    if spec is not None and spec.task_type != "chief":
        raise ValueError(f"TF_CONFIG.task.type is {spec.task_type!r}: this process is not the chief. Run ps and "
                         "worker tasks with `shardflow train-server`.")
    from shardflow.training.trainer import LOST_CLUSTER

    try:
        summary = _train_with_progress(config, spec)
    except LOST_CLUSTER as e:
        if spec is None:
            raise
        err.print(f"lost contact with the cluster ({type(e).__name__}: {redact_text(str(e).splitlines()[0])}); "
                  "exiting for a restart from the last checkpoint", highlight=False, markup=False)
        sys.exit(EXIT_RESTART)
    out.print(_train_table(config, summary))


def _train_with_progress(config: Any, spec: Any) -> Any:
    from shardflow.training.trainer import train

    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed:,.0f}/{task.total:,.0f}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("train", total=1, info="starting")
        state: dict[str, str] = {"eval": ""}

        def progress(event: str, **v: Any) -> None:
            if event == "start":
                bar.update(task, total=v["total_steps"], completed=v["start_step"],
                           info=f"{v['strategy']}, {v['workers']} worker(s), {v['format']}"
                                + (f", resumed from step {v['resumed_from']}" if v["resumed_from"] is not None else ""))
            elif event == "step":
                bar.update(task, completed=v["step"], info=f"loss {v['loss']:.4f}  {v['examples_per_s']:,.0f} ex/s  "
                                                          f"input stall {v['input_stall']:.1%}{state['eval']}")
            elif event == "eval":
                state["eval"] = f"  eval AUC {v['auc']:.4f}"
                logging.getLogger("shardflow.training").info("eval at step %d: %s", v["step"], v)

        return train(config, cluster=spec, progress=progress)


def _train_table(config: Any, summary: Any) -> Table:
    table = Table(title=f"training on {redact_url(config.data)}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    last = summary.evaluations[-1] if summary.evaluations else {}
    rows = [
        ("strategy", summary.strategy + (" (sharded: " + ", ".join(f"{n} in {k}" for n, k in summary.sharded.items())
                                          + ")" if summary.sharded else "")),
        ("steps", f"{summary.start_step:,} → {summary.steps:,}" + (f" (resumed from {summary.resumed_from:,})"
                                                                     if summary.resumed_from is not None else "")),
        ("examples/s", f"{summary.examples_per_s:,.0f} ({summary.examples:,} examples in {summary.seconds:.1f} s)"),
        ("input stall", f"{summary.input_stall:.1%} of step time waiting for data"),
    ]
    if last:
        rows += [("eval loss", f"{last['loss']:.4f}"), ("eval accuracy", f"{last['accuracy']:.4f}"),
                 ("eval AUC", f"{last['auc']:.4f} on {last['rows']:,.0f} rows")]
    if summary.optimum_auc is not None and last:
        rows.append(("optimum AUC (synth)", f"{summary.optimum_auc:.4f} (gap {summary.optimum_auc - last['auc']:+.4f})"))
    stats = summary.checkpoints
    rows += [
        ("checkpoints", f"{stats.saves} saved, last committed at step {stats.last_committed} in "
                        f"{redact_url(config.resolved_checkpoint_dir())}; training blocked {stats.blocked_seconds:.2f} s"),
        ("SavedModel", summary.export_path or "-"),
        ("curves", summary.curves_path or "-"),
        ("TensorBoard", f"{config.run_dir}/tensorboard"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command("train-server")
def train_server_command(
    config_file: Annotated[Optional[str], typer.Argument(metavar="[CONFIG.yaml]",
                                                         help="The job's training config (workers prepare their shards from it).")] = None,
) -> None:
    """Run the ps or worker task that TF_CONFIG describes, until stopped."""
    from shardflow.training.cluster import serve
    from shardflow.training.config import load_train_config
    from shardflow.training.strategy import parse_tf_config

    spec = parse_tf_config()
    serve(spec, load_train_config(config_file) if config_file else None)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: expected failures print one clear line, no traceback.

    Usage errors are handled by typer itself (exit 2), so is Ctrl-C (exit 130); failures found by
    a command exit 1; storage and input errors exit 2.
    """
    try:
        app(args=argv)
    except CommandFailed as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        sys.exit(1)
    except (ShardflowError, OSError, ValueError) as e:
        err.print(f"error: {e}", style="red", highlight=False, markup=False)
        sys.exit(2)
    except Exception as e:  # a bug or an untranslated library error: one line unless debugging
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        err.print(f"error: unexpected {type(e).__name__}: {redact_text(str(e))} "
                  "(run with --log-level DEBUG for the traceback)", style="red", highlight=False, markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
