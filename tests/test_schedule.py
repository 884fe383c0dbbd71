"""The cron scheduler, on real processes and the real clock: a small job script stands in for
``shardflow retrain`` where its exit codes and timing must be chosen; the CLI runs the real one."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shardflow.children import alive
from shardflow.schedule import Scheduler

from .conftest import TEST_SECRET, run_cli

# argv: LOG [ignore-term] SLEEP:EXIT ... (one per run, the last one repeats). It appends its start
# and end to LOG, prints a run record (exit 0 or 3) or fails with an error line on stderr.
JOB = """
import json, os, signal, sys, time
log, plan = sys.argv[1], sys.argv[2:]
if plan[0] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    plan = plan[1:]
done = open(log).read().count("start ") if os.path.exists(log) else 0
seconds, code = plan[min(done, len(plan) - 1)].split(":")
with open(log, "a") as f:
    f.write(f"start {time.time()} {os.getpid()}\\n")
print("job: working", file=sys.stderr, flush=True)
time.sleep(float(seconds))
with open(log, "a") as f:
    f.write(f"end {time.time()}\\n")
if code in ("0", "3"):
    print(json.dumps({"run": f"r{done + 1}", "decision": "promoted" if code == "0" else "not promoted",
                      "dataset": {"url": "s3://b/d", "version": 7},
                      "metrics": {"candidate": {"auc": 0.8123, "loss": 0.45}, "promoted": {"auc": 0.8}}}, indent=2))
else:
    print(f"error: run {done + 1} failed: lease held by host-a", file=sys.stderr)
sys.exit(int(code))
"""

# A scheduler in its own process: CRON STOP_TIMEOUT RUN_NOW COMMAND...
RUNNER = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(name)s: "
          "%(message)s'); from shardflow.schedule import Scheduler; sys.exit(Scheduler(sys.argv[1], "
          "command=sys.argv[4:], stop_timeout=float(sys.argv[2]), run_now=sys.argv[3] == '1').run())")


def _job(tmp_path: Path, *plan: str) -> tuple[list[str], Path]:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log = tmp_path / "runs.log"
    return [sys.executable, str(script), str(log), *plan], log


def _runs(log: Path) -> list[dict[str, float]]:
    """One dict per run: start, pid and (when it got there) end."""
    runs: list[dict[str, float]] = []
    for line in log.read_text().splitlines():
        kind, *values = line.split()
        if kind == "start":
            runs.append({"start": float(values[0]), "pid": int(values[1])})
        else:
            runs[-1]["end"] = float(values[0])
    return runs


def _fields(message: str) -> dict[str, str]:
    """A logfmt line's fields (the scheduler quotes values with spaces)."""
    return dict(item.split("=", 1) for item in shlex.split(message))


def _lines(text: str) -> list[dict[str, str]]:
    """The scheduler's log lines in a process's stderr."""
    marker = "shardflow.schedule: "
    return [_fields(line.split(marker, 1)[1]) for line in text.splitlines() if marker in line]


def _logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [_fields(r.getMessage()) for r in caplog.records if r.name == "shardflow.schedule"]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def _start_scheduler(tmp_path: Path, cron: str, command: list[str], *, stop_timeout: float = 60,
                     run_now: bool = True) -> tuple[subprocess.Popen[bytes], Path]:
    stderr = tmp_path / "scheduler.err"
    with stderr.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, cron, str(stop_timeout), "1" if run_now else "0",
                                 *command], stdout=subprocess.DEVNULL, stderr=sink)
    return proc, stderr


def test_runs_on_the_schedule_in_its_zone_and_a_failed_run_does_not_stop_it(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="shardflow.schedule")
    command, log = _job(tmp_path, "0.2:1", "0.2:0")
    code = Scheduler("*/2 * * * * *", command=command, timezone="Europe/Berlin", max_runs=2).run()
    assert code == 0
    started, first, second, stopped = _logged(caplog)
    assert started["schedule"] == "started" and datetime.fromisoformat(started["next_run"]).second % 2 == 0
    assert first["run"] == "1" and first["exit"] == "1" and first["outcome"] == "failed"
    assert first["last_stderr"] == "error: run 1 failed: lease held by host-a" and "decision" not in first
    assert second["run"] == "2" and second["exit"] == "0" and second["outcome"] == "promoted-or-nothing-to-do"
    assert second["decision"] == "promoted" and second["dataset_version"] == "7" and second["run_id"] == "r2"
    assert second["candidate.auc"] == "0.8123" and second["promoted.auc"] == "0.8" and "last_stderr" not in second
    assert stopped == {"schedule": "stopped", "reason": "max-runs", "runs": "2"}
    runs = _runs(log)
    assert len(runs) == 2
    for line, run in zip((first, second), runs):
        scheduled = datetime.fromisoformat(line["scheduled"])
        assert scheduled.second % 2 == 0 and scheduled.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
        assert run["start"] >= scheduled.timestamp()  # seconds first: every 2 s, never early
    assert datetime.fromisoformat(second["scheduled"]) > datetime.fromisoformat(first["scheduled"])


def test_a_long_run_skips_fire_times_and_runs_never_overlap(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="shardflow.schedule")
    command, log = _job(tmp_path, "1.6:3")  # every second, each run lasts longer than that
    assert Scheduler("* * * * * *", command=command, timezone="UTC", max_runs=2).run() == 0
    first, second = _runs(log)
    assert second["start"] >= first["end"]
    lines = _logged(caplog)
    one, two = lines[1], lines[2]
    assert one["outcome"] == "not-promoted" and one["decision"] == "not promoted"
    assert int(one["skipped"]) >= 1  # counted, not queued: run 2 is for a fire time after run 1 ended
    assert datetime.fromisoformat(two["scheduled"]).timestamp() > first["end"]
    assert datetime.fromisoformat(one["next_run"]) == datetime.fromisoformat(two["scheduled"])


def test_run_now_runs_at_once(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="shardflow.schedule")
    command, log = _job(tmp_path, "0:3")
    began = time.time()
    assert Scheduler("0 0 1 1 *", command=command, max_runs=1, run_now=True).run() == 0  # next fire: New Year
    assert len(_runs(log)) == 1 and _runs(log)[0]["start"] < began + 30
    started, run, _ = _logged(caplog)
    assert started["next_run"] == "now" and run["scheduled"] == "now" and run["exit"] == "3" and "next_run" not in run


@pytest.mark.parametrize(("signum", "ignores_term", "code", "stopped_by"), [
    (signal.SIGTERM, False, 0, "SIGTERM"),
    (signal.SIGTERM, True, 0, "SIGKILL"),  # a run that ignores SIGTERM is killed after --stop-timeout
    (signal.SIGINT, False, 130, "SIGTERM"),
])
def test_a_signal_mid_run_stops_the_run_and_the_scheduler(tmp_path, signum, ignores_term, code, stopped_by) -> None:
    command, log = _job(tmp_path, *(["ignore-term"] if ignores_term else []), "60:0")
    proc, stderr = _start_scheduler(tmp_path, "*/2 * * * * *", command, stop_timeout=1.5)
    try:
        _wait_for(lambda: log.exists() and "start" in log.read_text(), 60, "the run to start")
        child = _runs(log)[0]["pid"]
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code, stderr.read_text()
    finally:
        proc.kill()
    assert not alive(child) and "end" not in log.read_text()
    lines = _lines(stderr.read_text())
    run = next(line for line in lines if line.get("run") == "1" and "exit" in line)
    assert run["stopped_by"] == stopped_by and run["outcome"] in ("killed-by-SIGTERM", "killed-by-SIGKILL")
    assert lines[-1] == {"schedule": "stopped", "reason": signal.Signals(signum).name, "runs": "1"}
    assert len(_runs(log)) == 1  # no run started after the stop


def test_sigterm_wakes_a_sleeping_scheduler_at_once(tmp_path) -> None:
    command, log = _job(tmp_path, "0:0")
    proc, stderr = _start_scheduler(tmp_path, "0 0 1 1 *", command, run_now=False)
    try:
        _wait_for(lambda: "schedule=started" in stderr.read_text(), 60, "the scheduler to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0  # not at the next fire time (New Year), nor after a 30 s nap
    finally:
        proc.kill()
    assert not log.exists()
    assert _lines(stderr.read_text())[-1] == {"schedule": "stopped", "reason": "SIGTERM", "runs": "0"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_scheduler_ends_its_run(tmp_path) -> None:
    command, log = _job(tmp_path, "60:0")
    proc, _ = _start_scheduler(tmp_path, "*/2 * * * * *", command)
    try:
        _wait_for(lambda: log.exists() and "start" in log.read_text(), 60, "the run to start")
        child = _runs(log)[0]["pid"]
        assert alive(child)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    _wait_for(lambda: not alive(child), 15, f"the orphaned run (pid {child}) to end")
    assert "end" not in log.read_text()


@pytest.mark.parametrize(("args", "named"), [
    (["--cron", "not cron", "{config}"], "'not cron'"),
    (["--cron", "*/5 * * * *", "--timezone", "Mars/Olympus_Mons", "{config}"], "'Mars/Olympus_Mons'"),
    (["--cron", "*/5 * * * *", "{missing}"], "nothing-here.yaml"),
])
def test_bad_input_is_one_error_line(tmp_path, args: list[str], named: str) -> None:
    config = tmp_path / "retrain.yaml"
    config.write_text(_config(tmp_path))
    values = {"{config}": str(config), "{missing}": str(tmp_path / "nothing-here.yaml")}
    proc = run_cli("schedule", *[values.get(a, a) for a in args], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr


def test_cli_runs_retrain_twice_and_passes_its_flags_on(tmp_path) -> None:
    config = tmp_path / "retrain.yaml"
    config.write_text(_config(tmp_path))
    raw = tmp_path / "raw-override"  # does not exist: each retrain run fails fast, the schedule goes on
    args = ["schedule", "--cron", "*/2 * * * * *", "--max-runs", "2", "--timezone", "Europe/Berlin", str(config),
            "--raw", str(raw), "-o", f"secret={TEST_SECRET}"]
    proc = subprocess.run([sys.executable, "-m", "shardflow", *args], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    started, *runs, stopped = _lines(proc.stderr)
    assert f"retrain {config} --json -o secret=*** --raw={raw}" in started["command"]
    assert datetime.fromisoformat(started["next_run"]).utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert [run["run"] for run in runs] == ["1", "2"]
    for run in runs:  # retrain itself ran, with --raw passed on: it refused the missing URL as bad input
        assert run["exit"] == "2" and run["outcome"] == "bad-input", run
        assert "raw-override" in run["last_stderr"], run
    assert stopped == {"schedule": "stopped", "reason": "max-runs", "runs": "2"}
    assert TEST_SECRET not in proc.stdout + proc.stderr


def _config(tmp_path: Path) -> str:
    return "\n".join(["retrain:", f"  raw: {tmp_path / 'raw'}", f"  dataset: {tmp_path / 'dataset'}",
                      f"  checkpoint_dir: {tmp_path / 'checkpoints'}", f"  model_dir: {tmp_path / 'models'}",
                      f"  work_dir: {tmp_path / 'work'}", ""])
