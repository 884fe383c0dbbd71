"""``shardflow retrain``: new raw days ingested once, training warm-started on them plus a replay,
promotion by the rule, one retrain at a time, and a rerun after a kill that picks up where the
killed one stopped; on a local directory and on the S3 test server.

Every retrain is the real console script in its own process, run in a directory holding the
raw data and the config (relative paths in the YAML resolve against it). Records name absolute
URLs, so a copy of that directory elsewhere would still point at the original: the module's
retrains all run in one directory, ``world``, which a test first restores from a snapshot
taken after the first (two days) or the second (a third day) retrain.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import CheckpointStore, open_dataset, resolve

from .conftest import TEST_SECRET, S3Server
from .helpers import error_line

pytestmark = pytest.mark.timeout(900)  # each test runs a few retrains of ~20 s on 2 shared cores

SHARDFLOW = os.path.join(os.path.dirname(sys.executable), "shardflow")
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
ROWS_PER_DAY = 20_000
RAW_ROWS_PER_SHARD = 10_000  # two raw files a day
BATCH = 1024
CONFIG = "retrain.yaml"
BASE: dict[str, Any] = {
    "retrain": {"raw": "clicks", "dataset": "train", "checkpoint_dir": "ckpt", "model_dir": "models",
                "replay_days": 1, "eval_rows": 5_000},
    "pipeline": {"label": "label", "rows_per_shard": 10_000},
    "train": {"batch_size": BATCH, "eval_rows": 2_000, "eval_every": 1_000, "checkpoint": {"every_steps": 1_000},
              "model": {"hash_buckets": 16_384, "embedding_dim": 8, "hidden_units": [32]}},
}
ENV = {**os.environ, "COLUMNS": "200", "TF_CPP_MIN_LOG_LEVEL": "2"}

T = TypeVar("T")


# -- running it ------------------------------------------------------------------------------------

def _shardflow(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the console script; past ``timeout``, SIGTERM (a local cluster then stops its tasks,
    which run in sessions of their own), SIGKILL to what is left of its group, and fail."""
    process = subprocess.Popen([SHARDFLOW, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"shardflow {' '.join(args)} still running after {timeout:.0f} s\n{stdout}\n{stderr}")
    finally:
        if process.poll() is None:
            _stop_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _stop_group(process: subprocess.Popen[str], grace: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _config(cwd: Path, name: str = CONFIG, **sections: dict[str, Any]) -> str:
    """``BASE`` with ``sections`` merged in, written to ``cwd/name``; returns ``name``."""
    (cwd / name).write_text(yaml.safe_dump(_merge(BASE, sections)))
    return name


def _retrain(cwd: Path, config: str = CONFIG, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A retrain with ``--json`` that trained (exit 0 or 3); its run record, as printed."""
    proc = _shardflow(cwd, "retrain", config, "--json", *args)
    assert proc.returncode in (0, 3), (proc.returncode, proc.stdout, proc.stderr)
    return proc, json.loads(proc.stdout)  # stdout holds the JSON and nothing else


@dataclass
class Started:
    process: subprocess.Popen[str]
    stdout: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the retrain and anything it started (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


@contextlib.contextmanager
def _started(cwd: Path, logs: Path, *args: str) -> Iterator[Started]:
    """``shardflow *args`` running in the background (stdout and stderr to files under
    ``logs``); killed at the end of the block unless it has finished."""
    logs.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex[:6]
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        process = subprocess.Popen([SHARDFLOW, *args], cwd=cwd, stdout=out, stderr=err, text=True, env=ENV,
                                   start_new_session=True)
    started = Started(process, logs / f"{name}.out", logs / f"{name}.err")
    try:
        yield started
    finally:
        if process.poll() is None:
            _stop_group(process, grace=0)


def _wait_for(condition: Callable[[], T | None], started: Started, what: str, *, timeout: float = 300,
              every: float = 0.05) -> T:
    """Poll ``condition`` until it returns something; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if started.process.poll() is not None:
            raise AssertionError(f"the retrain exited {started.process.returncode} before {what}:\n{started.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s:\n{started.log()}")
        time.sleep(every)


# -- reading what it left --------------------------------------------------------------------------

def _append_day(world: Path, day: str, rows: int = ROWS_PER_DAY) -> None:
    """One more raw day (the same seed: the same rows as writing every day at once)."""
    synthesize(str(world / "clicks"), SynthConfig(rows=rows, days=1, start_date=day,
                                                   rows_per_shard=RAW_ROWS_PER_SHARD), append=True)


def _records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []


def _rows_by_day(url: str, options: dict[str, Any] | None = None) -> dict[str, pa.Table]:
    """Every row of the committed dataset's Parquet shards, by day, in a canonical order."""
    dataset = open_dataset(url, storage_options=options)
    tables: dict[str, list[pa.Table]] = {}
    for shard in dataset.shards():
        if shard.format == "parquet":
            with dataset.fs.open(dataset.shard_path(shard), "rb") as f:
                tables.setdefault(shard.partition["day"], []).append(pq.read_table(f))
    return {day: _sorted(pa.concat_tables(parts)) for day, parts in tables.items()}


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.schema.names])


def _assert_each_raw_row_once(world: Path, days: list[str]) -> None:
    """The dataset holds each raw row of each day exactly once: the same rows, none twice."""
    raw, data = _rows_by_day(str(world / "clicks")), _rows_by_day(str(world / "train"))
    assert sorted(data) == days
    for day in days:
        assert data[day].num_rows == raw[day].num_rows > 0, day
        ours = data[day].select(raw[day].schema.names).cast(raw[day].schema)
        assert ours.equals(raw[day]), f"{day}: the dataset's rows are not the raw rows"


def _train_rows(world: Path, days: list[str]) -> int:
    dataset = open_dataset(str(world / "train"))
    return sum(s.rows for s in dataset.shards("train") if s.format == "parquet" and s.partition["day"] in days)


def _steps(world: Path, days: list[str], epochs: float = 1.0) -> int:
    """The steps a run over ``days`` takes (one worker): what an uninterrupted run would reach."""
    return math.ceil(epochs * _train_rows(world, days) / BATCH)


def _checkpoint_rows(world: Path) -> dict[int, dict[str, Any]]:
    proc = _shardflow(world, "checkpoints", "list", "ckpt", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {row["step"]: row for row in json.loads(proc.stdout)}


def _run_steps(ckpt: Path, run: str) -> list[int]:
    """Steps of the committed checkpoints that carry the run's name."""
    for _ in range(20):
        try:
            records = CheckpointStore(str(ckpt)).list()
        except FileNotFoundError:  # pruned between listing and reading (a run is writing there)
            time.sleep(0.05)
            continue
        return [c.step for c in records if (c.metadata.get("run") or {}).get("name") == run]
    raise AssertionError(f"could not list {ckpt}")


def _lease_files(world: Path) -> list[Path]:
    """The lease records not marked released (a released one is kept: numbers are never reused)."""
    leases = world / "train" / "_leases"
    held = []
    for path in sorted(leases.glob("l*.json")) if leases.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):  # deleted or being replaced meanwhile
            if not json.loads(path.read_text()).get("released_at"):
                held.append(path)
    return held


# -- two retrains every test starts from -----------------------------------------------------------

@dataclass
class History:
    root: Path
    world: Path  # where every retrain of the module runs
    first: dict[str, Any]  # run records as printed: two days from nothing
    second: dict[str, Any]  # a third day

    def restore(self, snapshot: str) -> Path:
        """``world`` as it was after the ``first`` or ``second`` retrain."""
        shutil.rmtree(self.world, ignore_errors=True)
        shutil.copytree(self.root / snapshot, self.world, symlinks=True)
        return self.world


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("retrain")
    world = root / "world"
    world.mkdir()
    proc = _shardflow(world, "data", "synth", "--rows", str(2 * ROWS_PER_DAY), "--days", "2",
                      "--rows-per-shard", str(RAW_ROWS_PER_SHARD), "--output", "clicks", timeout=300)
    assert proc.returncode == 0, proc.stderr
    _config(world)
    _, first = _retrain(world)
    shutil.copytree(world, root / "first", symlinks=True)
    _append_day(world, DAYS[2])
    _, second = _retrain(world)
    shutil.copytree(world, root / "second", symlinks=True)
    return History(root, world, first, second)


def test_first_retrain_ingests_both_days_trains_from_scratch_and_promotes(history: History) -> None:
    world = history.restore("first")
    record = history.first
    assert record["decision"] == "promoted" and record["exit_code"] == 0 and record["promotion"] == 1
    assert record["partitions"] == {"column": "day", "ingested": DAYS[:2], "new": DAYS[:2], "trained_on": DAYS[:2]}
    final = _steps(world, DAYS[:2])
    assert record["steps"] == {"warm_start": None, "began_at": 0, "final": final}
    assert record["metrics"]["candidate"]["step"] == final and record["metrics"]["promoted"] is None
    assert record["metrics"]["partitions"] == DAYS[:2] and record["metrics"]["split"] == "eval"
    assert _records(world / "models" / "_runs") == [record]  # what --json printed is the stored run record

    [promotion] = _records(world / "models" / "_promotions")
    assert promotion["number"] == 1 and promotion["decision"] == "promoted" and promotion["previous"] is None
    assert promotion["checkpoint"]["dir"] == str(world / "ckpt") and promotion["checkpoint"]["step"] == final
    assert promotion["dataset"] == {"url": str(world / "train"), "version": 1}
    assert promotion["partitions"]["new"] == DAYS[:2] and promotion["partitions"]["trained_on"] == DAYS[:2]
    assert promotion["export"] == str(world / "models" / "exports" / str(final))
    assert (world / "models" / "exports" / str(final) / "saved_model" / "saved_model.pb").is_file()

    dataset = open_dataset(str(world / "train"))
    assert dataset.manifest.version == 1 and dataset.partitions("day") == DAYS[:2]
    assert [entry["partitions"] for entry in dataset.manifest.lineage] == [{"day": DAYS[:2]}]
    _assert_each_raw_row_once(world, DAYS[:2])
    rows = _checkpoint_rows(world)
    assert rows[final]["promoted"] and rows[final]["promotion"] == 1 and rows[final]["workers"] == 1


def test_a_new_day_is_ingested_alone_and_trained_on_with_a_replay_warm_started(history: History) -> None:
    world = history.restore("second")
    record, before = history.second, history.first["steps"]["final"]
    assert record["decision"] == "promoted" and record["promotion"] == 2
    assert record["run"] == "retrain-v00000002" and record["dataset"]["version"] == 2
    assert record["partitions"] == {"column": "day", "ingested": [DAYS[2]], "new": [DAYS[2]],
                                    "trained_on": DAYS[1:3]}
    final = before + _steps(world, DAYS[1:3])
    assert record["steps"] == {"warm_start": before, "began_at": before, "final": final}
    # Both models scored on the same rows of the new day only.
    assert record["metrics"]["partitions"] == [DAYS[2]]
    assert record["metrics"]["candidate"]["step"] == final and record["metrics"]["promoted"]["step"] == before

    # The pipeline ran on the new day alone: one new version whose lineage names it, whose new
    # shards are all under day=DAY3/, and which keeps every shard of the first version.
    dataset, old = open_dataset(str(world / "train")), open_dataset(str(world / "train"), version=1)
    assert dataset.manifest.version == 2
    assert dataset.manifest.lineage[-1]["partitions"] == {"day": [DAYS[2]]}
    assert dataset.manifest.lineage[-1]["version"] == 2
    old_paths = {s.path for s in old.shards()}
    new = [s for s in dataset.shards() if s.path not in old_paths]
    assert old_paths <= {s.path for s in dataset.shards()} and new
    assert all(s.partition == {"day": DAYS[2]} and s.path.startswith(f"day={DAYS[2]}/") for s in new), new
    _assert_each_raw_row_once(world, DAYS[:3])

    promotions = _records(world / "models" / "_promotions")
    assert [p["number"] for p in promotions] == [1, 2]
    latest = promotions[-1]
    assert latest["previous"] == {"number": 1, "step": before}
    assert latest["checkpoint"]["step"] == final and latest["dataset"]["version"] == 2
    assert latest["partitions"]["new"] == [DAYS[2]] and latest["partitions"]["trained_on"] == DAYS[1:3]
    assert [r["run"] for r in _records(world / "models" / "_runs")] == ["retrain-v00000001", "retrain-v00000002"]

    candidate = CheckpointStore(str(world / "ckpt")).find(final)
    assert candidate.metadata["run"] == {"name": "retrain-v00000002", "began_at": before, "warm_start": before}
    assert candidate.metadata["dataset"] == {"url": str(world / "train"), "version": 2}
    rows = _checkpoint_rows(world)
    assert [step for step, row in rows.items() if row["promoted"]] == [final]
    assert rows[final]["promotion"] == 2 and rows[before]["promotion"] == 1 and not rows[before]["promoted"]


def test_nothing_new_is_nothing_to_do(history: History) -> None:
    world = history.restore("second")

    def state() -> tuple[Any, ...]:
        return (sorted(os.listdir(world / "models" / "_runs")), sorted(os.listdir(world / "models" / "_promotions")),
                sorted(os.listdir(world / "train" / "_manifests")), sorted(os.listdir(world / "ckpt" / "_checkpoints")),
                open_dataset(str(world / "train")).manifest.version)
    before = state()
    proc = _shardflow(world, "retrain", CONFIG)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing to do"), proc.stdout
    assert state() == before and before[-1] == 2
    assert _lease_files(world) == []


def test_a_concurrent_retrain_is_refused_naming_the_holder(history: History, tmp_path: Path) -> None:
    world = history.restore("second")
    _append_day(world, DAYS[3])
    with _started(world, tmp_path / "logs", "retrain", CONFIG, "--json") as first:
        def holder() -> str | None:
            for path in _lease_files(world):
                with contextlib.suppress(OSError, ValueError):
                    return json.loads(path.read_text())["holder"]
            return None
        held_by = _wait_for(holder, first, "lease of the first retrain")
        second = _shardflow(world, "retrain", CONFIG, timeout=300)
        first_running = first.process.poll() is None
        first.process.wait(timeout=600)
    line = error_line(second, "held by", held_by, f"pid {first.process.pid}", code=1)
    assert first_running, f"the first retrain ended before the second was refused: {line}"
    assert first.process.returncode in (0, 3), first.log()
    record = json.loads(first.stdout.read_text())
    assert record["run"] == "retrain-v00000003" and record["partitions"]["new"] == [DAYS[3]]
    assert [r["run"] for r in _records(world / "models" / "_runs")][-1:] == ["retrain-v00000003"]
    assert len(_records(world / "models" / "_runs")) == 3  # the refused one wrote none
    assert _lease_files(world) == []


def _write_lease(world: Path, holder: str, expires: dt.datetime) -> None:
    """A lease record as another host's retrain would have left it."""
    leases = world / "train" / "_leases"
    leases.mkdir(parents=True, exist_ok=True)
    renewed = expires - dt.timedelta(minutes=10)
    number = max([int(p.stem[1:]) for p in leases.glob("l*.json")] or [0]) + 1  # the newest record is the lease
    (leases / f"l{number:08d}.json").write_text(json.dumps({
        "number": number, "holder": holder, "host": "elsewhere", "pid": 1,
        "renewed_at": renewed.isoformat(), "expires_at": expires.isoformat()}))


def test_an_expired_lease_is_taken_over(history: History) -> None:
    world = history.restore("second")
    _append_day(world, DAYS[3])
    now = dt.datetime.now(dt.timezone.utc)
    _write_lease(world, "ghost", now + dt.timedelta(hours=1))  # current: refused (the record is read as a lease)
    error_line(_shardflow(world, "retrain", CONFIG, timeout=300), "held by ghost", code=1)
    assert len(_records(world / "models" / "_runs")) == 2

    for path in (world / "train" / "_leases").glob("l*.json"):  # the refused run left the ghost's as it was
        path.unlink()
    _write_lease(world, "ghost", now - dt.timedelta(minutes=1))
    proc, record = _retrain(world)
    assert "ghost" in proc.stderr  # the warning naming whose lease was taken over
    assert record["run"] == "retrain-v00000003" and record["partitions"]["new"] == [DAYS[3]]
    assert _records(world / "models" / "_runs")[-1] == record
    assert _lease_files(world) == []


@pytest.mark.chaos  # the kill trials of test_kill_trials cover a killed pipeline in make test
def test_killed_in_the_pipeline_the_rerun_ingests_each_row_once(history: History, tmp_path: Path) -> None:
    """Killed while the pipeline writes the new day (its staging directory exists for about half
    a second with this day's 120,000 rows; polled every 10 ms, and tried again if it was missed)."""
    for attempt in range(3):
        world = history.restore("second")
        _append_day(world, DAYS[3], rows=6 * ROWS_PER_DAY)
        config = _config(world, "big.yaml", retrain={"epochs": 0.2})
        staging = world / "train" / "_staging"
        with _started(world, tmp_path / f"logs-{attempt}", "retrain", config) as killed:
            def writing() -> str | None:
                if staging.is_dir() and any(staging.iterdir()):
                    return "writing"
                return "missed" if "rows read" in killed.log() else None  # committed between two polls
            moment = _wait_for(writing, killed, "pipeline writing under train/_staging/", every=0.01)
            killed.kill()
        assert killed.process.returncode == -signal.SIGKILL
        if moment == "writing":
            break
    else:
        pytest.fail("three times the pipeline wrote and committed the new day between two polls 10 ms apart")

    _, record = _retrain(world, config)
    assert record["run"] == "retrain-v00000003"
    assert record["partitions"]["new"] == [DAYS[3]] and record["partitions"]["trained_on"] == DAYS[2:4]
    _assert_each_raw_row_once(world, DAYS)
    lineage = open_dataset(str(world / "train")).manifest.lineage
    added = [day for entry in lineage for day in entry["partitions"]["day"]]
    assert sorted(added) == DAYS  # each day appended by exactly one version
    assert [r["run"] for r in _records(world / "models" / "_runs")].count("retrain-v00000003") == 1
    assert _lease_files(world) == []


def test_killed_in_training_the_rerun_resumes_its_own_checkpoints(history: History, tmp_path: Path) -> None:
    world = history.restore("second")
    _append_day(world, DAYS[3])
    config = _config(world, "resume.yaml", retrain={"epochs": 2.0}, train={"checkpoint": {"every_steps": 10}})
    began, run = history.second["steps"]["final"], "retrain-v00000003"
    ckpt = world / "ckpt"
    with _started(world, tmp_path / "logs", "retrain", config) as killed:
        _wait_for(lambda: _run_steps(ckpt, run), killed, f"checkpoint of {run}")
        killed.kill()
    cut = _run_steps(ckpt, run)
    expected = began + _steps(world, DAYS[2:4], epochs=2.0)
    assert cut and max(cut) < expected, (cut, expected)  # killed before the end

    _, record = _retrain(world, config)
    assert record["run"] == run and record["partitions"]["new"] == [DAYS[3]]
    assert record["steps"] == {"warm_start": began, "began_at": began, "final": expected}
    resumed = [step for step in _run_steps(ckpt, run) if step not in cut]
    assert resumed and min(resumed) > max(cut), (cut, resumed)  # went on from the killed run's last checkpoint
    store = CheckpointStore(str(ckpt))
    for step in _run_steps(ckpt, run):
        assert store.get(step).metadata["run"] == {"name": run, "began_at": began, "warm_start": began}
    assert began in store.steps()  # the promoted checkpoint survives the run's retention
    assert [r["run"] for r in _records(world / "models" / "_runs")].count(run) == 1
    assert _lease_files(world) == []


@pytest.mark.chaos  # test_killed_in_training_the_rerun_resumes_its_own_checkpoints covers a kill in training in make test
def test_killed_in_its_first_training_the_rerun_resumes(tmp_path: Path) -> None:
    """No promotion yet: the killed run's own checkpoints are not taken for a finished model."""
    world = tmp_path / "world"
    world.mkdir()
    proc = _shardflow(world, "data", "synth", "--rows", str(2 * ROWS_PER_DAY), "--days", "2",
                      "--rows-per-shard", str(RAW_ROWS_PER_SHARD), "--output", "clicks", timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = _config(world, "resume.yaml", retrain={"epochs": 2.0}, train={"checkpoint": {"every_steps": 10}})
    run, ckpt = "retrain-v00000001", world / "ckpt"
    with _started(world, tmp_path / "logs", "retrain", config) as killed:
        _wait_for(lambda: _run_steps(ckpt, run), killed, f"checkpoint of {run}")
        killed.kill()
    cut = _run_steps(ckpt, run)
    expected = _steps(world, DAYS[:2], epochs=2.0)
    assert cut and max(cut) < expected, (cut, expected)

    _, record = _retrain(world, config)
    assert record["run"] == run and record["decision"] == "promoted" and record["partitions"]["new"] == DAYS[:2]
    assert record["steps"] == {"warm_start": None, "began_at": 0, "final": expected}
    resumed = [step for step in _run_steps(ckpt, run) if step not in cut]
    assert resumed and min(resumed) > max(cut), (cut, resumed)


def test_stopped_between_promotion_and_run_record_the_rerun_records_it(history: History) -> None:
    """The state a crash right after the promotion record leaves: promoted, no run record."""
    world = history.restore("second")
    sorted((world / "models" / "_runs").glob("r*.json"))[-1].unlink()
    steps = CheckpointStore(str(world / "ckpt")).steps()
    proc, record = _retrain(world)
    assert proc.returncode == 0, proc.stderr
    second = history.second
    assert record["run"] == second["run"] and record["decision"] == "promoted" and record["promotion"] == 2
    assert record["steps"] == second["steps"] and record["metrics"] == second["metrics"]
    assert record["partitions"] == second["partitions"]
    assert len(_records(world / "models" / "_promotions")) == 2  # not promoted again
    assert CheckpointStore(str(world / "ckpt")).steps() == steps  # nothing trained
    again = _shardflow(world, "retrain", CONFIG)
    assert again.returncode == 0 and again.stdout.startswith("nothing to do"), again.stdout


def test_a_candidate_below_min_value_is_not_promoted(history: History) -> None:
    world = history.restore("second")
    _append_day(world, DAYS[3])
    config = _config(world, "strict.yaml", retrain={"promotion": {"min_value": 0.99}})
    proc, record = _retrain(world, config)
    assert proc.returncode == 3, proc.stderr
    final, promoted = record["steps"]["final"], history.second["steps"]["final"]
    assert record["decision"] == "not promoted" and record["exit_code"] == 3 and record["promotion"] is None
    assert "min_value" in record["reason"] and record["metrics"]["candidate"]["auc"] < 0.99
    assert _records(world / "models" / "_runs")[-1] == record
    assert [p["number"] for p in _records(world / "models" / "_promotions")] == [1, 2]
    assert not (world / "models" / "exports" / str(final)).exists()
    rows = _checkpoint_rows(world)
    assert [step for step, row in rows.items() if row["promoted"]] == [promoted]
    assert rows[final]["latest"] and rows[final]["promotion"] is None


def test_a_large_max_regression_promotes(history: History) -> None:
    """Also: the configured learning rate applies after a warm start (not the one restored)."""
    world = history.restore("second")
    _append_day(world, DAYS[3])
    config = _config(world, "lenient.yaml", retrain={"promotion": {"max_regression": 1.0}},
                     train={"learning_rate": 0.125})
    proc, record = _retrain(world, config)
    assert proc.returncode == 0, proc.stderr
    final, previous = record["steps"]["final"], history.second["steps"]["final"]
    assert record["decision"] == "promoted" and record["promotion"] == 3
    latest = _records(world / "models" / "_promotions")[-1]
    assert latest["number"] == 3 and latest["checkpoint"]["step"] == final
    assert latest["previous"] == {"number": 2, "step": previous} and latest["rule"]["max_regression"] == 1.0
    rows = _checkpoint_rows(world)
    assert [step for step, row in rows.items() if row["promoted"]] == [final] and rows[final]["promotion"] == 3
    store = CheckpointStore(str(world / "ckpt"))
    files = world / "ckpt" / store.find(final).directory / "ckpt"
    import tensorflow as tf

    assert tf.train.load_checkpoint(str(files)).get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE") == 0.125


@pytest.mark.chaos  # a minute of local clusters; warm starts are tested in make test
def test_warm_start_from_two_workers_into_one(tmp_path: Path) -> None:
    """A real local cluster (2 workers, 2 ps) trains the first model; the next retrain, on one
    worker, starts from its weights: trained for only two steps, it scores within noise of it
    (a model two steps from scratch scores about 0.59 AUC here, a trained one about 0.72)."""
    proc = _shardflow(tmp_path, "data", "synth", "--rows", str(2 * ROWS_PER_DAY), "--days", "2",
                      "--rows-per-shard", str(RAW_ROWS_PER_SHARD), "--output", "clicks", timeout=300)
    assert proc.returncode == 0, proc.stderr
    cluster = _config(tmp_path, "cluster.yaml", train={"cluster": "local", "workers": 2, "ps": 2})
    _, first = _retrain(tmp_path, cluster)
    base = first["steps"]["final"]
    store = CheckpointStore(str(tmp_path / "ckpt"))
    assert (store.get(base).metadata["workers"], store.get(base).metadata["ps"]) == (2, 2)

    _append_day(tmp_path, DAYS[2])
    one = _config(tmp_path, "one.yaml", retrain={"epochs": 0.05})
    _, record = _retrain(tmp_path, one)
    final = base + _steps(tmp_path, DAYS[1:3], epochs=0.05)
    assert record["steps"] == {"warm_start": base, "began_at": base, "final": final}
    candidate = store.get(final).metadata
    assert (candidate["workers"], candidate["ps"]) == (1, 0)
    assert candidate["run"] == {"name": "retrain-v00000002", "began_at": base, "warm_start": base}
    scores = record["metrics"]
    assert scores["promoted"]["step"] == base and scores["partitions"] == [DAYS[2]]
    assert scores["candidate"]["auc"] >= scores["promoted"]["auc"] - 0.02, scores
    assert scores["promoted"]["auc"] > 0.65, scores  # the two-worker model itself learned something


@pytest.mark.parametrize("case", ["unknown-field", "no-partitions", "missing-partition-column"])
def test_bad_input_is_oneerror_line(tmp_path: Path, case: str) -> None:
    synthesize(str(tmp_path / "clicks"), SynthConfig(rows=2_000, days=2, rows_per_shard=1_000))
    if case == "unknown-field":
        config, fragments = _config(tmp_path, retrain={"bogus": 1}), ["retrain.bogus", "Extra inputs are not permitted"]
    elif case == "no-partitions":
        plain = tmp_path / "plain"
        plain.mkdir()
        for i, path in enumerate(sorted((tmp_path / "clicks").glob("day=*/*.parquet"))):
            shutil.copy(path, plain / f"part-{i}.parquet")
        config, fragments = _config(tmp_path, retrain={"raw": "plain"}), ["retrain.raw", str(plain), "no partitions"]
    else:
        config, fragments = _config(tmp_path, retrain={"partition_column": "hour"}), ["retrain.partition_column",
                                                                                      "'hour'"]
    error_line(_shardflow(tmp_path, "retrain", config, timeout=300), *fragments)
    assert not (tmp_path / "train").exists() and not (tmp_path / "models").exists()


def test_on_s3_promotes_and_no_record_holds_the_secret(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"s3://{s3_server.bucket}/retrain-{uuid.uuid4().hex[:8]}"
    options = s3_server.cli_options
    synth = _shardflow(tmp_path, "data", "synth", "--rows", "10000", "--days", "2", "--rows-per-shard", "5000",
                       "--output", f"{prefix}/clicks", *options, timeout=300)
    assert synth.returncode == 0, synth.stderr
    config = _config(tmp_path, retrain={"raw": f"{prefix}/clicks", "dataset": f"{prefix}/train",
                                        "checkpoint_dir": f"{prefix}/ckpt", "model_dir": f"{prefix}/models",
                                        "eval_rows": 2_000})
    proc, record = _retrain(tmp_path, config, *options)
    assert proc.returncode == 0 and record["decision"] == "promoted" and record["promotion"] == 1
    assert record["dataset"] == {"url": f"{prefix}/train", "version": 1}

    fs, root = resolve(prefix, s3_server.storage_options)
    fs.invalidate_cache()
    promotion = json.loads(fs.cat_file(f"{root}/models/_promotions/p00000001.json"))
    assert promotion["checkpoint"]["dir"] == f"{prefix}/ckpt"
    assert promotion["checkpoint"]["step"] == record["steps"]["final"]
    assert fs.find(f"{root}/models/exports/{record['steps']['final']}")
    raw, data = (_rows_by_day(f"{prefix}/{name}", s3_server.storage_options) for name in ("clicks", "train"))
    assert {day: t.num_rows for day, t in data.items()} == {day: t.num_rows for day, t in raw.items()} == \
        {DAYS[0]: 5_000, DAYS[1]: 5_000}
    leases = [json.loads(fs.cat_file(path)) for path in fs.find(f"{root}/train/_leases")]
    assert leases and all(lease.get("released_at") for lease in leases)  # kept, marked released
    secret = TEST_SECRET.encode()
    looked_at = [*fs.find(f"{root}/models"), *fs.find(f"{root}/ckpt/_checkpoints"), *fs.find(f"{root}/train/_manifests"),
                 *fs.find(f"{root}/train/_leases"), f"{root}/train/manifest.json"]
    assert len(looked_at) > 5
    for path in looked_at:
        assert secret not in fs.cat_file(path), path
    for directory, _, files in os.walk(tmp_path):  # the local work directory: configs, logs, caches
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                assert secret not in f.read(), os.path.join(directory, name)
    assert TEST_SECRET not in synth.stdout + synth.stderr + proc.stdout + proc.stderr
