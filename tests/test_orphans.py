"""A launcher killed outright (SIGKILL: the OOM killer, ``kill -9``, a killed container) runs no
cleanup; every process it started must still end by itself within a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from shardflow.pipelines.synth import SynthConfig, synthesize
from tests.helpers import SHARDFLOW_EXE as EXE
from tests.helpers.processes import tagged_processes, wait_until_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")



@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("orphans")
    synthesize(str(root / "raw"), SynthConfig(rows=200_000, days=2, rows_per_shard=25_000))
    return str(root / "raw")


@pytest.fixture
def tag(process_tag: str) -> str:
    return process_tag


def _kill_once_started(tag: str, args: list[str], started: list[bytes], log) -> list[int]:
    """Start ``shardflow ARGS``, wait until a process matching each of ``started`` runs, SIGKILL
    the launcher alone, and return every tagged process (its descendants) seen before the kill."""
    proc = subprocess.Popen([EXE, *args], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not all(tagged_processes(tag, needle) for needle in started):
            assert proc.poll() is None, f"exited {proc.returncode} before it got going"
            assert time.monotonic() < deadline, "never started"
            time.sleep(0.2)
        seen = [pid for pid in tagged_processes(tag) if pid != proc.pid]
    finally:
        proc.kill()
        proc.wait()
    return seen


def test_a_killed_local_cluster_launcher_leaves_no_task_running(raw, tag, tmp_path) -> None:
    subprocess.run([EXE, "pipeline", "run", "--input", raw, "--output", str(tmp_path / "data"), "--label", "label",
                    "--formats", "tfrecord", "--rows-per-shard", "50000"], check=True, capture_output=True)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": {"hash_buckets": 4096, "embedding_dim": 4, "hidden_units": [16]},
                                      "batch_size": 128, "run_dir": str(tmp_path / "run"), "eval_split": None}))
    with (tmp_path / "stderr.txt").open("w") as log:
        seen = _kill_once_started(tag, ["train", str(config), "--data", str(tmp_path / "data"), "--cluster", "local",
                                        "--workers", "1", "--ps", "1", "--steps", "1000000"],
                                  [b'"type": "chief"', b'"type": "ps"', b'"type": "worker"'], log)
    assert len(seen) >= 3  # coordinator, ps, worker
    assert not wait_until_gone(tag, 10), "processes outlived their killed launcher"


@pytest.mark.parametrize("engine,settings,worker", [
    ("beam", {"direct_running_mode": "multi_processing", "direct_num_workers": 2}, b"beam_worker"),
    ("dask", {"dask_processes": True, "dask_workers": 2}, b"multiprocessing.spawn"),
], ids=["beam-multi-processing", "dask-worker-processes"])
def test_a_killed_pipeline_leaves_no_worker_process_running(raw, tag, tmp_path, engine, settings, worker) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"input": raw, "output": str(tmp_path / "out"), "label": "label", "engine": engine,
                                      "formats": ["parquet", "tfrecord"], **settings}))
    with (tmp_path / "stderr.txt").open("w") as log:
        seen = _kill_once_started(tag, ["pipeline", "run", str(config)], [worker], log)
    assert len(seen) >= 2
    assert not wait_until_gone(tag, 10), "worker processes outlived their killed pipeline"
    assert not (tmp_path / "out" / "_manifests").exists()  # nothing committed, nothing half-visible


def test_a_child_of_ours_ends_with_its_parent_without_the_kernel_signal(tag) -> None:
    """The portable fallback (``exit_with_parent``): a parent that sets no death signal is SIGKILLed."""
    child = "from shardflow.children import exit_with_parent; exit_with_parent(); import time; time.sleep(600)"
    parent = ("import subprocess, sys, time; from shardflow.children import child_env; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=child_env()); "
              "print(p.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    time.sleep(1.5)  # the child is past its imports, watching
    proc.kill()
    proc.wait()
    assert not wait_until_gone(tag, 10), f"pid {pid} outlived its parent"
