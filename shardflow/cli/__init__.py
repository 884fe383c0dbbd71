"""The ``shardflow`` command: wires storage, pipelines and training together, nothing more.
One module per command group."""

from __future__ import annotations

import gc
import logging
import sys
from typing import Annotated

import typer

from shardflow.children import exit_with_parent
from shardflow.storage import ShardflowError
from shardflow.storage.urls import redact_text

from .checkpoints import checkpoints_app
from .cluster import cluster_app
from .common import CommandFailed, err
from .data import data_app
from .pipeline import pipeline_app
from .retrain import retrain_command
from .schedule import schedule_command
from .train import train_command, train_server_command

__all__ = ["app", "main"]

app = typer.Typer(help="shardflow: shard, augment and stream big training data.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(data_app, name="data")
app.add_typer(pipeline_app, name="pipeline")
app.command("train")(train_command)
app.command("train-server")(train_server_command)
app.add_typer(checkpoints_app, name="checkpoints")
app.command("retrain")(retrain_command)
app.command("schedule")(schedule_command)
app.add_typer(cluster_app, name="cluster")


@app.callback()
def _root(log_level: Annotated[str, typer.Option(help="Logging level for machine-readable logs on stderr.")] = "WARNING") -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: expected failures print one clear line, no traceback.

    Usage errors (a bad flag value, an unknown option) exit 2, Ctrl-C 130; failures found by a
    command exit 1; storage and input errors exit 2.
    """
    exit_with_parent()  # started by a shardflow process (a local cluster's task, a scheduled run)
    try:
        code = app(args=argv, standalone_mode=False)  # usage errors raised here, not framed by typer
        sys.exit(code if isinstance(code, int) else 0)
    except typer.TyperException as e:  # a usage error: typer's own click raises these
        if not e.format_message():  # a command group run bare: its help is the answer
            e.show()
        else:
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"error: {e.format_message()}{where}", style="red", highlight=False, markup=False)
        sys.exit(e.exit_code)
    except typer.Abort:  # Ctrl-C
        sys.exit(130)
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
    finally:
        # The process ends here (the console script passes no argv): the collector's passes over
        # everything Beam, Dask or TensorFlow loaded cost up to a second at exit; frozen objects
        # are skipped (and freed by the OS). A caller passing argv keeps its collector as it was.
        if argv is None:
            gc.freeze()

