"""A worker that hangs (SIGSTOP: alive, connected, never answering) must not freeze the job.

TensorFlow retries the steps of a worker that *fails*, but waits forever on one that hangs; the
coordinator's stall watchdog (``training/watchdog.py``) ends it when a call into the cluster blocks
for ``stall_seconds``, and the local cluster restarts every task from the last committed checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import CheckpointStore
from shardflow.training.watchdog import StallWatchdog, take_stall
from tests.helpers import SHARDFLOW_EXE as EXE
from tests.helpers.processes import tagged_processes, wait_until_gone


def test_the_watchdog_ends_a_process_whose_call_into_the_cluster_hangs(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import threading, time
        from shardflow.training.watchdog import StallWatchdog
        with StallWatchdog(1.0, {str(tmp_path)!r}) as watchdog:
            for _ in range(3):  # calls that return in time, 2 s of them in all: longer than the timeout
                watchdog.timed(time.sleep)(0.7)
            time.sleep(1.5)  # the coordinator's own work is not timed
            print("timely calls kept it alive", flush=True)
            watchdog.timed(threading.Event().wait)()  # hung, as behind a stopped worker
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "timely calls kept it alive" in proc.stdout
    assert time.monotonic() - started < 30
    stalled = take_stall(str(tmp_path), 1)
    assert stalled and "in timed_call" in open(stalled).read()  # every thread's traceback, for whoever looks
    assert take_stall(str(tmp_path), 2) is None  # taken: a later attempt starts clean


def test_a_coordinator_that_ends_normally_leaves_no_stall(tmp_path) -> None:
    with StallWatchdog(5.0, str(tmp_path)) as watchdog:
        watchdog.timed(time.sleep)(0.1)
    assert take_stall(str(tmp_path), 1) is None and not os.listdir(tmp_path / "logs")


@pytest.fixture
def tag(process_tag: str) -> str:
    return process_tag


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_a_stopped_worker_does_not_deadlock_the_job(tmp_path, tag) -> None:
    synthesize(str(tmp_path / "raw"), SynthConfig(rows=40_000, days=2, rows_per_shard=10_000))
    subprocess.run([EXE, "pipeline", "run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "data"),
                    "--label", "label", "--formats", "tfrecord", "--rows-per-shard", "10000"], check=True,
                   capture_output=True)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"hash_buckets": 4096, "embedding_dim": 4, "hidden_units": [16]}, "batch_size": 128,
        "run_dir": str(tmp_path / "run"), "eval_split": None, "log_every": 10, "checkpoint": {"every_steps": 50},
        "stall_seconds": 60}))
    # Files, not pipes: while a task is down TensorFlow logs enough to fill a pipe and stall the job.
    with (tmp_path / "stdout.txt").open("w") as stdout, (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen([EXE, "train", str(config), "--data", str(tmp_path / "data"), "--cluster", "local",
                                 "--workers", "2", "--ps", "1", "--steps", "400"], stdout=stdout, stderr=stderr)
    records = tmp_path / "run" / "checkpoints" / "_checkpoints"
    deadline = time.monotonic() + 300
    while not (records.exists() and any(records.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()[-3000:]
        time.sleep(0.2)
    worker = tagged_processes(tag, b"train-server", b'"type": "worker", "index": 0')
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGSTOP)
    stopped_at = time.monotonic()
    proc.wait(timeout=600)
    out = (tmp_path / "stdout.txt").read_text()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "Training stalled: a call into the cluster blocked for 60 s" in err and "restarting every task" in err
    assert "(resumed from " in out and "→ 400" in out
    assert CheckpointStore(str(tmp_path / "run" / "checkpoints")).latest().step == 400
    print(f"stopped worker: job finished {time.monotonic() - stopped_at:.0f} s after the SIGSTOP")
    assert not wait_until_gone(tag, 10), "processes left behind"
