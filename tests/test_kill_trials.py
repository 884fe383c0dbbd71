"""Pipelines SIGKILLed at random moments, on both engines and every local execution mode.

Each trial starts from a committed version 1, kills ``shardflow pipeline run`` at a seeded
random moment, then checks what a reader sees (version 1, or a whole version 2: never a
partial shard or manifest), reruns to completion and compares with a clean run: the same
manifest content, every row once. ``make chaos`` runs them all (seeds printed with ``-s``);
``make test`` runs one trial on each engine.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time

import pytest
import yaml

from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import open_dataset
from shardflow.storage.gc import collect_garbage
from tests.helpers import SHARDFLOW_EXE as EXE
from tests.helpers.processes import wait_until_gone

ROWS = 60_000
MODES = {
    "beam-threads": {"engine": "beam", "direct_running_mode": "multi_threading", "direct_num_workers": 2},
    "beam-processes": {"engine": "beam", "direct_running_mode": "multi_processing", "direct_num_workers": 2},
    "dask-threads": {"engine": "dask", "dask_workers": 2},
    "dask-processes": {"engine": "dask", "dask_processes": True, "dask_workers": 2},
}
TRIALS = 6  # per mode under `make chaos`: 24 in all


class Setup:
    def __init__(self, root) -> None:
        self.root = root
        self.raw = str(root / "raw")
        synthesize(self.raw, SynthConfig(rows=ROWS, days=2, rows_per_shard=10_000))
        started = time.monotonic()
        self.reference = self.run(root / "reference", MODES["beam-threads"])  # every mode writes the same bytes
        self.seconds = time.monotonic() - started  # kill moments are drawn within about a run's time
        self.base = root / "base"  # version 1: another seed, so a completed run makes a version 2
        self.run(self.base, MODES["dask-threads"], seed=7)

    def config(self, output, mode: dict, seed: int | None = None) -> str:
        path = f"{output}.yaml"
        with open(path, "w") as f:
            yaml.safe_dump({"input": self.raw, "output": str(output), "label": "label", "formats": ["parquet", "tfrecord"],
                            "rows_per_shard": 8_000, **({"seed": seed} if seed is not None else {}), **mode}, f)
        return path

    def run(self, output, mode: dict, seed: int | None = None):
        subprocess.run([EXE, "pipeline", "run", self.config(output, mode, seed)], check=True, capture_output=True)
        return open_dataset(str(output)).manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp("kill-trials"))


@pytest.fixture
def tag(process_tag: str) -> str:
    return process_tag


def _same_data(a, b) -> bool:
    """The same shards, schema and metadata, but for the engine's name (and the writer's params:
    they name the output and mode, which differ)."""
    def content(m):
        return m.schema, m.feature_spec, m.shards, {**m.metadata, "pipeline": {**m.metadata["pipeline"], "engine": None}}
    return content(a) == content(b)


def _trial(setup: Setup, name: str, seed: int, tmp_path, tag: str) -> str:
    rng = random.Random(seed)
    output = tmp_path / f"ds-{name}-{seed}"
    shutil.copytree(setup.base, output)
    delay = rng.uniform(0.0, setup.seconds * 0.6)  # after it starts writing: most trials kill it mid-write
    proc = subprocess.Popen([EXE, "pipeline", "run", setup.config(output, MODES[name])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = output / "_staging"
    while not any(staging.glob("run-*")) and proc.poll() is None:  # past its imports and plan: rows on their way
        time.sleep(0.02)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        staged = sum(1 for p in staging.rglob("*") if p.is_file())
        proc.kill()
        proc.wait()
        killed = True
    where = f"{name} seed={seed} kill {delay:.2f}s into its writing"
    print(f"trial {where}: {f'killed with {staged} staged file(s)' if killed else 'finished first'}")
    assert not wait_until_gone(tag, 10), f"{where}: processes outlived the killed pipeline"

    # What a reader sees now: version 1, or a whole version 2; never a partial shard or manifest.
    seen = open_dataset(str(output))
    assert seen.manifest.version in (1, 2), where
    assert seen.verify() == [], where
    assert open_dataset(str(output), version=1).verify() == [], f"{where}: the previous version is damaged"
    if seen.manifest.version == 2:
        assert _same_data(seen.manifest, setup.reference), where

    # A rerun completes it, with the content of a clean run: each row once.
    subprocess.run([EXE, "pipeline", "run", setup.config(output, MODES[name])], check=True, capture_output=True)
    done = open_dataset(str(output))
    assert done.manifest.version == 2 and _same_data(done.manifest, setup.reference), where
    rows = {split: sum(s.rows for s in done.manifest.shards if s.split == split and s.format == "parquet")
            for split in ("train", "eval")}
    assert sum(rows.values()) == ROWS, f"{where}: rows {rows}"
    # And what the killed run left behind is unreferenced scratch, which gc removes.
    collect_garbage(str(output), grace_seconds=0, keep_versions=1)
    assert open_dataset(str(output)).verify() == [], where
    leftovers = [p for p in output.rglob("*") if p.is_file() and ("_staging" in p.parts or p.name.startswith(".tmp-"))]
    assert not leftovers, f"{where}: gc left {leftovers[:3]}"
    return "killed" if killed else "finished"


@pytest.mark.parametrize("name", ["beam-processes", "dask-threads"])
def test_a_pipeline_killed_at_a_random_moment_loses_and_duplicates_nothing(setup, name, tmp_path, tag) -> None:
    _trial(setup, name, seed=list(MODES).index(name), tmp_path=tmp_path, tag=tag)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(MODES))
def test_random_kill_trials(setup, name, tmp_path, tag) -> None:
    outcomes = [_trial(setup, name, seed, tmp_path, tag) for seed in range(100, 100 + TRIALS)]
    print(f"{name}: {TRIALS} trials, {outcomes.count('killed')} killed mid-run, {outcomes.count('finished')} finished first")
    assert outcomes.count("killed") >= 2, "too few runs were killed mid-run to prove anything"
