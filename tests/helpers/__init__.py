"""What several test modules share."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import yaml

SHARDFLOW_EXE = os.path.join(os.path.dirname(sys.executable), "shardflow")  # the real console script


def committed_clicks(root: Any, *, rows: int, days: int, raw_rows_per_shard: int, rows_per_shard: int) -> str:
    """Synthesized clicks through the pipeline into a committed TFRecord + Parquet dataset under ``root``."""
    from shardflow.pipelines.config import load_config
    from shardflow.pipelines.run import run_pipeline
    from shardflow.pipelines.synth import SynthConfig, synthesize

    synthesize(str(root / "raw"), SynthConfig(rows=rows, days=days, rows_per_shard=raw_rows_per_shard))
    run_pipeline(load_config(None, {"input": str(root / "raw"), "output": str(root / "clicks"), "label": "label",
                                    "formats": ["parquet", "tfrecord"], "rows_per_shard": rows_per_shard}))
    return str(root / "clicks")


def train_config(tmp_path: Any, model: dict[str, Any], *, eval_rows: int, **settings: Any) -> str:
    """A small training config file in ``tmp_path`` (run dir ``tmp_path/run``); ``settings`` override."""
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"model": model, "batch_size": 128, "log_every": 10, "eval_rows": eval_rows,
                                    "run_dir": str(tmp_path / "run"), **settings}))
    return str(path)


def error_line(proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 2) -> str:
    """The command failed as it should: exit ``code`` (2: bad input), no traceback, exactly one
    line saying ``error: ...`` that holds every fragment (on that one line: a wrapped message fails)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, proc.stderr)
    return errors[0]
