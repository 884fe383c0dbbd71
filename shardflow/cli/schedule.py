"""``shardflow schedule``: run ``shardflow retrain`` on a cron schedule, one run at a time."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any, Optional

import typer

from .common import StorageOption

def schedule_command(
    config_file: Annotated[str, typer.Argument(metavar="CONFIG.yaml",
                                               help="The retrain config (YAML); every run reads it again.")],
    cron: Annotated[str, typer.Option(help="Cron expression: 5 fields (minute hour day-of-month month "
                                           "day-of-week), or 6 with seconds first ('*/10 * * * * *').")],
    timezone: Annotated[Optional[str], typer.Option(help="IANA time zone of the cron times (default: the local "
                                                         "zone; UTC in most containers).")] = None,
    max_runs: Annotated[Optional[int], typer.Option(help="Stop after this many runs.")] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Run once at start, then follow the schedule.")] = False,
    stop_timeout: Annotated[float, typer.Option(help="Seconds a run gets to stop after SIGTERM before it is "
                                                     "killed.")] = 60.0,
    raw: Annotated[Optional[str], typer.Option(help="Passed on to retrain: URL of the raw partitions.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Passed on to retrain: URL of the training dataset.")] = None,
    checkpoint_dir: Annotated[Optional[str], typer.Option(help="Passed on to retrain: checkpoint URL.")] = None,
    model_dir: Annotated[Optional[str], typer.Option(help="Passed on to retrain: promoted models and records.")] = None,
    storage_option: StorageOption = None,
) -> None:
    """Run `shardflow retrain CONFIG.yaml` at each fire time of --cron, never two runs at once.

    Each run is a child process; its exit code and record go into one log line on stderr. A
    failed run does not stop the schedule. SIGTERM stops it (exit 0), Ctrl-C too (exit 130): a
    run in progress gets SIGTERM and --stop-timeout seconds, then is killed.
    """
    from shardflow.schedule import Scheduler
    from shardflow.storage import parse_storage_options
    from shardflow.storage.urls import redact_text, secret_values

    urls = {"raw": raw, "dataset": dataset, "checkpoint_dir": checkpoint_dir, "model_dir": model_dir}
    passthrough = [arg for item in storage_option or [] for arg in ("-o", item)]
    passthrough += [f"--{name.replace('_', '-')}={value}" for name, value in urls.items() if value is not None]
    command = [sys.executable, "-m", "shardflow", "retrain", config_file, "--json", *passthrough]
    options = parse_storage_options(storage_option or [])
    secrets = secret_values(options)
    scheduler = Scheduler(cron, command=command, timezone=timezone, max_runs=max_runs, run_now=run_now,
                          stop_timeout=stop_timeout, redact=lambda text: redact_text(text, secrets))
    config = _check_config(config_file, urls, options)
    secrets += secret_values(config.storage_options)
    logger = logging.getLogger("shardflow.schedule")
    if logger.getEffectiveLevel() > logging.INFO:  # its one line per run is the point: show it by default
        logger.setLevel(logging.INFO)
    code = scheduler.run()
    if code:
        raise typer.Exit(code)


def _check_config(path: str, urls: dict[str, Optional[str]], options: dict[str, Any]) -> Any:
    """Fail at start, not at the first fire time, on a config that every run would refuse."""
    from shardflow.retrain.config import flag_overrides, load_retrain_config

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Invalid value for `CONFIG.yaml`: {path!r}. No such file.")
    return load_retrain_config(path, flag_overrides(urls, options))
