"""``shardflow train`` and ``shardflow train-server``: parameter-server training."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shardflow.storage import ShardflowError, open_dataset, parse_storage_options, redact_url
from shardflow.storage.urls import redact_text

from .common import CommandFailed, StorageOption, err, out


ClusterChoice = Annotated[Optional[str], typer.Option(help="none (this process) or local (a real ps/worker cluster "
                                                       "on 127.0.0.1).")]


def train_command(
    config_file: Annotated[Optional[str], typer.Argument(metavar="[CONFIG.yaml]", help="Training config (YAML; - reads stdin).")] = None,
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
    from shardflow.training.failures import supervised
    from shardflow.training.trainer import LOST_CLUSTER

    try:
        summary = _train_with_progress(config, spec)
    except LOST_CLUSTER as e:
        if spec is None:
            raise
        err.print(f"lost contact with the cluster ({type(e).__name__}: {redact_text(str(e).splitlines()[0])}); "
                  "exiting for a restart from the last checkpoint", highlight=False, markup=False)
        sys.exit(EXIT_RESTART)
    except (ShardflowError, OSError, ValueError):
        if supervised():  # noted for the local cluster's supervisor, which prints it as the last line
            sys.exit(2)
        raise
    out.print(_train_table(config, summary))


def _train_with_progress(config: Any, spec: Any) -> Any:
    from shardflow.training.trainer import train

    with train_progress() as progress:
        return train(config, cluster=spec, progress=progress)


@contextlib.contextmanager
def train_progress() -> Iterator[Callable[..., None]]:
    """A progress bar on stderr for the trainer's ``progress(event, **values)`` callback."""
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

        yield progress


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


def train_server_command(
    config_file: Annotated[Optional[str], typer.Argument(metavar="[CONFIG.yaml]",
                                                         help="The job's training config (YAML; - reads stdin): workers prepare their shards from it.")] = None,
) -> None:
    """Run the ps or worker task that TF_CONFIG describes, until stopped."""
    from shardflow.training.cluster import serve
    from shardflow.training.config import load_train_config
    from shardflow.training.strategy import parse_tf_config

    spec = parse_tf_config()
    serve(spec, load_train_config(config_file) if config_file else None)


