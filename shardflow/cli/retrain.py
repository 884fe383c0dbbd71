"""``shardflow retrain``: bring the model up to date on new partitions; promote it when it is as good.

Exit codes, for schedulers: 0 promoted or nothing to do, 3 trained but not promoted, 1 failed
(another retrain holds the lease, training failed), 2 bad input.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from shardflow.storage import ShardflowError, parse_storage_options
from shardflow.storage.urls import redact_text

from .common import CommandFailed, StorageOption, err, out
from .train import train_progress


def retrain_command(
    config_file: Annotated[str, typer.Argument(metavar="CONFIG.yaml", help="Retrain config (see examples/retrain.yaml).")],
    raw: Annotated[Optional[str], typer.Option(help="Raw input URL, partitioned key=value/ (overrides retrain.raw).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Training dataset URL (overrides retrain.dataset).")] = None,
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Checkpoint URL (overrides retrain.checkpoint_dir).")] = None,
    model_dir: Annotated[Optional[str], typer.Option(help="Promoted models' URL (overrides retrain.model_dir).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON instead of a table.")] = False,
    storage_option: StorageOption = None,
) -> None:
    """Ingest new raw partitions, train warm-started on them plus a replay, promote the model
    if it is not worse than the promoted one. Exit 0 promoted or nothing to do, 3 not promoted,
    1 failed, 2 bad input."""
    from shardflow.retrain.config import flag_overrides, load_retrain_config
    from shardflow.retrain.run import retrain

    urls = {"raw": raw, "dataset": dataset, "checkpoint_dir": checkpoint_dir, "model_dir": model_dir}
    config = load_retrain_config(config_file, flag_overrides(urls, parse_storage_options(storage_option or [])))
    say = lambda line: err.print(line, highlight=False, markup=False)  # noqa: E731
    try:
        with train_progress() as progress:
            outcome = retrain(config, say=say, train_progress=progress)
    except ValueError:  # bad input found on the way (exit 2)
        raise
    except Exception as e:  # a failure (exit 1): storage, training, the lease; messages name where
        known = isinstance(e, (OSError, RuntimeError, ShardflowError))
        raise CommandFailed(redact_text(str(e) if known else f"{type(e).__name__}: {e}")) from None
    if as_json:
        print(json.dumps(outcome.record or {"decision": outcome.decision, "reason": outcome.reason}, indent=2))
    elif outcome.record is None:
        out.print(f"nothing to do: {outcome.reason}", highlight=False, markup=False, soft_wrap=True)
    else:
        out.print(_summary(outcome.record, outcome.record_url))
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _summary(record: dict[str, Any], url: str | None) -> Table:
    metric = record["rule"]["metric"]
    table = Table(title=f"retrain {record['run']}: {record['decision']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    parts = record["partitions"]
    scores = record["metrics"]
    promoted = scores["promoted"]
    rows = [
        ("ingested", ", ".join(parts["ingested"]) or "-"),
        ("new partitions", ", ".join(parts["new"])),
        ("trained on", f"{', '.join(parts['trained_on'])} (dataset version {record['dataset']['version']})"),
        ("steps", f"{record['steps']['began_at']:,} → {record['steps']['final']:,}"
                  + (f" (warm start from {record['steps']['warm_start']:,})" if record["steps"]["warm_start"] is not None
                     else " (from scratch)")),
        (f"candidate {metric}", f"{scores['candidate'][metric]:.4f} on {scores['rows']:,} {scores['split']} rows"),
        (f"{scores.get('baseline') or 'promoted'} {metric}",
         f"{promoted[metric]:.4f} (step {promoted['step']:,})" if promoted else "- (none yet)"),
        ("decision", f"{record['decision']}: {record['reason']}"),
        ("promotion", f"p{record['promotion']:08d}" if record["promotion"] else "-"),
        ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items())),
        ("run record", url or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
