"""``shardflow checkpoints``: list, show, download, evaluate and export checkpoints in buckets,
long after the training job is gone. Everything runs in this process, no cluster."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich import box
from rich.table import Table

from shardflow.storage import CheckpointStore, parse_storage_options, redact_url

from .common import StorageOption, err, human_bytes, out

checkpoints_app = typer.Typer(help="List, show, download, evaluate and export committed checkpoints.",
                              no_args_is_help=True)

Url = Annotated[str, typer.Argument(help="Checkpoint directory URL (local, s3://, gs://, az://).", metavar="URL")]
Step = Annotated[Optional[int], typer.Option(help="A committed step (default: the latest).", min=0)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store(url: str, storage_option: list[str] | None) -> CheckpointStore:
    return CheckpointStore(url, storage_options=parse_storage_options(storage_option or []))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="shardflow-checkpoints-") as tmp:
        yield tmp


def promoted_steps(store: CheckpointStore, committed: list[Any], model_dir: str | None) -> tuple[int | None, dict[int, int]]:
    """The step serving now and every promoted step's promotion number, from the promotion
    records in ``model_dir`` (default: the one retraining noted in the newest record naming one)."""
    from shardflow.retrain.promotion import promotions

    if model_dir is None:
        noted = [c.metadata.get("train_config", {}).get("model_dir") for c in committed]
        model_dir = next((m for m in reversed(noted) if m), None)
    if model_dir is None:
        return None, {}
    here = redact_url(store.url if "://" in store.url else os.path.abspath(store.url))  # as retraining records it
    mine = [r for r in promotions(model_dir, store.storage_options).list() if r.data["checkpoint"]["dir"] == here]
    return (mine[-1].data["checkpoint"]["step"] if mine else None), {r.data["checkpoint"]["step"]: r.number for r in mine}


def checkpoint_rows(store: CheckpointStore, model_dir: str | None = None) -> list[dict[str, Any]]:
    """One entry per checkpoint, committed or not, ascending by step."""
    committed = store.list()
    latest = committed[-1].step if committed else None
    serving, promoted = promoted_steps(store, committed, model_dir)
    rows = []
    for c in committed:
        meta = c.metadata
        rows.append({"step": c.step, "created": c.created_at, "bytes": c.bytes, "committed": True,
                     "latest": c.step == latest, "promoted": c.step == serving, "promotion": promoted.get(c.step),
                     "train_loss": meta.get("train_loss"), "eval": meta.get("eval"), "examples": meta.get("examples"),
                     "dataset": meta.get("dataset"), "workers": meta.get("workers"), "ps": meta.get("ps"),
                     "url": redact_url(store.url_of(c))})
    for step, directories in store.uncommitted(committed).items():
        size = sum(store.directory_bytes(d) for d in directories)
        rows.append({"step": step, "created": None, "bytes": size, "committed": False, "latest": False,
                     "promoted": False, "promotion": None, "train_loss": None, "eval": None, "examples": None, "dataset": None,
                     "workers": None, "ps": None, "url": redact_url(f"{store.url}/{directories[0]}")})
    return sorted(rows, key=lambda r: (r["step"], not r["committed"]))


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


@checkpoints_app.command("list")
def list_command(url: Url, model_dir: Annotated[Optional[str], typer.Option(
                     help="Where retraining promotes (default: the model dir the checkpoints' records name).")] = None,
                 as_json: Json = False, storage_option: StorageOption = None) -> None:
    """One row per checkpoint: committed or not, latest, promoted, and what the trainer knew then."""
    store = _store(url, storage_option)
    rows = checkpoint_rows(store, model_dir)
    if not rows:
        raise FileNotFoundError(f"{redact_url(store.url)}: no checkpoints there.")
    if as_json:
        _print_json(rows)
        return
    table = Table(title=f"checkpoints in {redact_url(store.url)} (created: month-day, UTC)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("step", "created", "size", "state", "loss", "eval AUC", "examples"):
        table.add_column(col, justify="left" if col in ("created", "state") else "right", no_wrap=True)
    for r in rows:  # latest and promoted are committed
        state = "[yellow]uncommitted[/]" if not r["committed"] else "latest" if r["latest"] else "committed"
        state += "*" if r["promoted"] else "+" if r["promotion"] else ""
        table.add_row(f"{r['step']:,}", r["created"][5:16].replace("T", " ") if r["created"] else "-", human_bytes(r["bytes"]), state,
                      _fmt(r["train_loss"], ".4f"), _fmt((r["eval"] or {}).get("auc"), ".4f"), _fmt(r["examples"], ","))
    out.print(table)
    if any(r["promotion"] for r in rows):
        out.print("* promoted: serving now; + promoted before (MODEL_DIR/_promotions)", highlight=False)
    sources = {(r["dataset"]["url"], r["dataset"]["version"], r["workers"], r["ps"]) for r in rows if r["dataset"]}
    for url, version, workers, ps in sorted(sources, key=str):
        out.print(f"trained on {url} version {version} by {workers} worker(s) and {ps} ps")


_GROUPS = (("model/", "model weights"), ("optimizer/_variables/", "optimizer slots"),
           ("batches_consumed/", "input position"))


def variable_rows(reader: Any, layout: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variable in the checkpoint's index, with what its record says of it (name, shards)."""
    import numpy as np

    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    rows = []
    for key in sorted(shapes):
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        group = next((name for prefix, name in _GROUPS if key.startswith(prefix)), "other")
        dtype = dtypes[key]
        size = int(np.prod(shapes[key], dtype=np.int64)) * (dtype.size if dtype.is_numpy_compatible else 0)
        known = layout.get(key, {})
        rows.append({"key": key, "variable": known.get("name") or key.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE"),
                     "group": group, "shape": list(shapes[key]), "dtype": dtype.name, "bytes": size,
                     "shards": known.get("shards")})  # None: a record written before layouts were noted
    return rows


@checkpoints_app.command("show")
def show_command(url: Url, step: Step = None, as_json: Json = False, storage_option: StorageOption = None) -> None:
    """The variables of a checkpoint, grouped; reads only its index file."""
    from shardflow.training._tf import tf
    from shardflow.training.state import PREFIX

    store = _store(url, storage_option)
    record = store.find(step)
    with _scratch() as tmp:
        store.copy(record, tmp, files=[f"{PREFIX}.index"])
        rows = variable_rows(tf.train.load_checkpoint(os.path.join(tmp, PREFIX)),
                             record.metadata.get("variables") or {})
    if as_json:
        _print_json({"step": record.step, "url": redact_url(store.url_of(record)), "variables": rows,
                     "bytes": sum(r["bytes"] for r in rows)})
        return
    table = Table(title=f"step {record.step:,} in {redact_url(store.url)}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("variable", "shape", "dtype", "bytes", "shards"):
        table.add_column(col, justify="right" if col in ("bytes", "shards") else "left", no_wrap=col != "variable",
                         overflow="fold")
    for _, group in (*_GROUPS, ("", "other")):
        members = [r for r in rows if r["group"] == group]
        if not members:
            continue
        table.add_row(f"[bold]{group}[/]", "", "", f"[bold]{human_bytes(sum(r['bytes'] for r in members))}[/]", "")
        for r in members:
            table.add_row(f"  {r['variable']}", "×".join(map(str, r["shape"])) or "scalar", r["dtype"],
                          human_bytes(r["bytes"]), _fmt(r["shards"]))
        table.add_section()
    out.print(table)
    out.print(f"total {human_bytes(sum(r['bytes'] for r in rows))} in {len(rows)} variables; "
              f"{human_bytes(record.bytes)} of files")


@checkpoints_app.command("download")
def download_command(url: Url, dest: Annotated[str, typer.Argument(help="A new local directory.", metavar="DEST")],
                     step: Step = None, as_json: Json = False, storage_option: StorageOption = None) -> None:
    """Copy a checkpoint's files to DEST, each verified; then tf.train.load_checkpoint(DEST) works."""
    from shardflow.storage.commit import require_new_dir, staged_dir

    store = _store(url, storage_option)
    record = store.find(step)
    require_new_dir(dest)
    with staged_dir(dest) as staged, Progress(TextColumn("[bold]download"), BarColumn(), DownloadColumn(),
                                              TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                                              transient=True) as bar:
        task = bar.add_task("bytes", total=record.bytes)
        store.copy(record, staged, on_bytes=lambda n: bar.advance(task, n))
    if as_json:
        _print_json({"step": record.step, "url": redact_url(store.url_of(record)), "dest": dest,
                     "files": len(record.files), "bytes": record.bytes, "verified": True})
        return
    out.print(f"[green]downloaded[/] step {record.step:,}: {len(record.files)} files, {human_bytes(record.bytes)}, "
              f"checksums verified, to {dest}")


def _load(url: str, step: int | None, storage_option: list[str] | None, tmp: str, *, with_optimizer: bool = False) -> Any:
    from shardflow.training import quiet_native_stderr
    from shardflow.training.state import load_checkpoint

    with quiet_native_stderr():  # the first look at devices probes CUDA, noisily where there is none
        return load_checkpoint(url, step=step, local_dir=tmp, storage_options=parse_storage_options(storage_option or []),
                               with_optimizer=with_optimizer)


@checkpoints_app.command("evaluate")
def evaluate_command(
    url: Url,
    data: Annotated[str, typer.Option(help="URL of a committed dataset.")],
    step: Step = None,
    split: Annotated[str, typer.Option(help="The split to score.")] = "eval",
    rows: Annotated[Optional[int], typer.Option(help="Score the first N rows only (default: all).", min=1)] = None,
    as_json: Json = False,
    storage_option: StorageOption = None,
) -> None:
    """Loss, AUC and accuracy of a checkpoint on a dataset's split, in this process."""
    from shardflow.storage import open_dataset
    from shardflow.training.evaluation import evaluate_model, predict_logits, split_data
    from shardflow.training.inputs import ShardReader

    dataset = open_dataset(data, storage_options=parse_storage_options(storage_option or []))
    with _scratch() as tmp:
        loaded = _load(url, step, storage_option, tmp)
        reader = ShardReader(dataset, loaded.spec, cache_dir=os.path.join(tmp, "cache"), cache_bytes=64 << 30)
        metrics = evaluate_model(predict_logits(loaded.model), split_data(dataset, loaded.spec, reader, split=split,
                                                                           rows=rows))
    recorded = loaded.record.metadata.get("eval")
    if as_json:
        _print_json({"step": loaded.record.step, "dataset": redact_url(data), "split": split, **metrics,
                     "recorded_eval": recorded})
        return
    table = Table(title=f"step {loaded.record.step:,} on {redact_url(data)} ({split})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name in ("loss", "auc", "accuracy"):
        table.add_row(name, f"{metrics[name]:.4f}")
    table.add_row("rows", f"{metrics['rows']:,.0f}")
    if recorded:
        table.add_row("trainer's eval then", f"AUC {recorded['auc']:.4f}, loss {recorded['loss']:.4f} on "
                                             f"{recorded['rows']:,.0f} rows")
    out.print(table)


def _list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def report_table(report: Any) -> Table:
    """The export report in 80 columns (report.json has every figure): ×, the float SavedModel's
    bytes over the artifact's (both gzipped for gzip×); |Δp|, the largest change of a row's
    probability against the float checkpoint."""
    table = Table(title=f"export of step {report.step:,}: {report.rows:,} {report.split} rows, float checkpoint "
                        f"AUC {report.checkpoint_auc:.4f}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("artifact", "size", "×", "gzip×", "AUC", "loss", "ΔAUC", "|Δp|"):
        table.add_column(col, justify="left" if col == "artifact" else "right", no_wrap=True)
    pruned = False
    for a in report.artifacts:
        if a.name.startswith("pruned/") and not pruned:
            pruned = True
            table.add_section()
            table.add_row(f"[bold]pruned {report.pruning['target']:.0%}[/]")
            steps = report.pruning["fine_tune_steps"]
            table.caption = f"pruned: {report.pruning['target']:.0%} of each kernel's weights and table's rows" + \
                (f", then {steps} fine-tune steps" if steps else ", no fine-tuning")
        name = a.name.removeprefix("pruned/").removesuffix(".tflite").replace("tflite/model_", "TFLite ")
        table.add_row(name.replace("saved_model", "SavedModel").replace("_", " "), human_bytes(a.bytes),
                      f"{a.ratio:.2f}", f"{a.gzip_ratio:.2f}", f"{a.auc:.4f}", f"{a.log_loss:.4f}",
                      f"{a.auc_change:+.4f}", f"{a.max_abs_dprob:.4f}")
    return table


@checkpoints_app.command("export")
def export_command(
    url: Url,
    dest: Annotated[str, typer.Argument(help="Where the export goes: a new local directory, or any URL.", metavar="DEST")],
    step: Step = None,
    formats: Annotated[str, typer.Option("--format", help="saved_model, tflite or both: saved_model,tflite.")] = "saved_model",
    quantize: Annotated[Optional[str], typer.Option(help="Compressions: int8, float16 (SavedModel id tables and "
                                                         "TFLite), dynamic (TFLite); comma-separated.")] = None,
    prune: Annotated[Optional[float], typer.Option(help="Prune to this sparsity (0 < S < 1) before compressing.")] = None,
    fine_tune_steps: Annotated[int, typer.Option(help="Train steps after pruning, pruned weights kept at zero.",
                                                 min=0)] = 0,
    data: Annotated[Optional[str], typer.Option(help="Dataset to score on (default: the checkpoint's own).")] = None,
    split: Annotated[str, typer.Option(help="The split the report scores on.")] = "eval",
    eval_rows: Annotated[int, typer.Option(help="Rows of that split the report scores on.", min=1)] = 100_000,
    as_json: Json = False,
    storage_option: StorageOption = None,
) -> None:
    """Export a checkpoint's model (SavedModel, compressed SavedModel, TFLite) and score each artifact."""
    from shardflow.training.export import check_export_arguments, export_checkpoint

    options = parse_storage_options(storage_option or [])
    kwargs = {"formats": _list(formats), "quantize": _list(quantize), "prune": prune}
    check_export_arguments(dest, **kwargs, fine_tune_steps=fine_tune_steps, storage_options=options)  # before fetching
    with _scratch() as tmp:
        loaded = _load(url, step, storage_option, tmp, with_optimizer=bool(fine_tune_steps))
        with Progress(TextColumn("[bold]export"), TextColumn("{task.description}"), console=err, transient=True) as bar:
            task = bar.add_task("restoring")
            report = export_checkpoint(loaded, dest, **kwargs, fine_tune_steps=fine_tune_steps, data=data, split=split,
                                       eval_rows=eval_rows, storage_options=options, work_dir=tmp,
                                       progress=lambda message: bar.update(task, description=message))
    if as_json:
        print(report.to_json(), end="")
        return
    out.print(report_table(report))
    out.print(f"[green]exported[/] to {redact_url(report.location)} (report.json there)")
