"""A cron scheduler for one command: each run is a child process, never two at once.

:class:`Scheduler` is generic (any command); ``shardflow schedule`` gives it
``python -m shardflow retrain CONFIG --json``. Cron expressions are croniter's: 5 fields
(minute hour day-of-month month day-of-week), or 6 with **seconds first**
(``*/10 * * * * *`` fires every 10 seconds), in a time zone from :mod:`zoneinfo` (DST-aware).

Behaviour:

- Runs are sequential. A run that lasts past later fire times skips them (the run's log line
  counts them); they are not queued, so there is never a catch-up burst.
- Every run ends in one log line on the ``shardflow.schedule`` logger, ``key=value`` pairs
  (logfmt; values with spaces are JSON-quoted): run number, exit code and its meaning, the fire
  time, start and duration, the run record's key fields when the command printed a JSON object
  on stdout (``decision``, ``dataset_version``, metric values), otherwise its last stderr line.
  The child's stderr is forwarded as it comes.
- A failed run (any non-zero exit, a crash, a signal) never stops the scheduler.
- SIGTERM or SIGINT (or :meth:`Scheduler.stop`) wakes a sleeping scheduler at once; a run in
  progress gets SIGTERM and ``stop_timeout`` seconds (a second signal cuts that short), then its
  process group gets SIGKILL. :meth:`Scheduler.run` then returns 0 (SIGTERM: Kubernetes' way to
  stop a pod, a normal end) or 130 (SIGINT, the shell's Ctrl-C convention).
- On Linux each child is started with ``PR_SET_PDEATHSIG=SIGTERM``: if the scheduler itself is
  SIGKILLed (OOM killer, ``kill -9``) the kernel sends the child SIGTERM, so no orphaned run keeps
  training (and holding the retrain lease) with nobody to log it. The kernel sends it when the
  *thread* that started the child ends, which is why :meth:`Scheduler.run` starts children from
  the thread that calls it and waits for them there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from shardflow.children import child_env, death_signal

__all__ = ["EXIT_MEANINGS", "RunResult", "Scheduler", "format_fields", "next_fire_time", "parse_run_record",
           "record_fields", "resolve_timezone"]

log = logging.getLogger("shardflow.schedule")

# `shardflow retrain`'s exit codes; any other code (or none) is a failure.
EXIT_MEANINGS = {0: "promoted-or-nothing-to-do", 1: "failed", 2: "bad-input", 3: "not-promoted"}

_SKIPPED_CAP = 10_000  # fire times counted after a long run; beyond this the line says "10000+"
_STDOUT_LIMIT = 1 << 20  # stdout bytes kept for the run record (its tail)
_POLL_SECONDS = 0.2  # how often a running child is checked; a signal wakes the check at once
_MAX_SLEEP_SECONDS = 30.0  # sleeps are cut into pieces so a wall-clock jump is noticed


def resolve_timezone(name: str | None) -> tzinfo:
    """The zone of the cron times: ``name`` (IANA), else the local zone, else UTC.

    The local zone is ``$TZ`` when it names an IANA zone, else ``/etc/localtime``; a container
    with neither gets UTC.

    Raises:
        ValueError: ``name`` is not a time zone this machine knows.
    """
    if name is None:
        return _local_timezone()
    if name == "UTC":
        return dt_timezone.utc  # needs no tz database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"Invalid value for `timezone`: {name!r}. Expected an IANA time zone name such as "
                         "'Europe/Berlin', 'America/New_York' or 'UTC' (names are case-sensitive; without "
                         "/usr/share/zoneinfo install the tzdata package).") from None


def _local_timezone() -> tzinfo:
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(env)
    path = os.path.realpath("/etc/localtime")
    if "/zoneinfo/" in path:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
            return ZoneInfo(path.rsplit("/zoneinfo/", 1)[1])
    with contextlib.suppress(OSError, ValueError), open("/etc/localtime", "rb") as f:
        return ZoneInfo.from_file(f, key="localtime")
    return dt_timezone.utc


def next_fire_time(cron: str, after: datetime) -> datetime:
    """The first fire time of ``cron`` strictly after ``after`` (aware), in ``after``'s zone.

    Raises:
        croniter.CroniterError: ``cron`` is not valid or matches no date.
    """
    return croniter(cron, after, second_at_beginning=True).get_next(datetime)


def _count_fire_times(cron: str, after: datetime, until: datetime) -> int:
    """Fire times in ``(after, until]``, at most ``_SKIPPED_CAP``."""
    times = croniter(cron, after, second_at_beginning=True)
    end = until.timestamp()
    count = 0
    while count < _SKIPPED_CAP and times.get_next(float) <= end:
        count += 1
    return count


def _check_cron(cron: str, zone: tzinfo) -> None:
    example = "'0 3 * * *' (03:00 daily) or '*/10 * * * * *' (every 10 seconds)"
    try:
        next_fire_time(cron, datetime.now(zone))
    except CroniterBadDateError:
        raise ValueError(f"Invalid value for `cron`: {cron!r}. It matches no date in the next 50 years.") from None
    except (CroniterError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"Invalid value for `cron`: {cron!r}. Expected 5 fields (minute hour day-of-month month "
                         f"day-of-week) or 6 with seconds first, e.g. {example} ({e}).") from None


def parse_run_record(stdout: str) -> dict[str, Any] | None:
    """The JSON object a run printed on stdout (``retrain --json`` prints nothing else), or None."""
    try:
        value = json.loads(stdout)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def record_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """A retrain run record's key fields, flat, for the log line: ``run`` (as ``run_id``),
    ``decision``, ``reason``, ``promotion``, ``dataset_version``, and its metrics by model
    (``candidate.auc``, ``promoted.step``, ...) beside ``rows``."""
    dataset, metrics = record.get("dataset"), record.get("metrics")
    fields: dict[str, Any] = {"run_id": record.get("run"), **{k: record.get(k) for k in ("decision", "reason", "promotion")},
                              "dataset_version": dataset.get("version") if isinstance(dataset, Mapping) else None}
    for key, value in (metrics.items() if isinstance(metrics, Mapping) else ()):
        if isinstance(value, Mapping):  # one model's scores
            fields.update((f"{key}.{name}", score) for name, score in value.items())
        else:
            fields[key] = value
    return {key: value for key, value in fields.items() if _is_scalar(value)}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def format_fields(fields: Mapping[str, Any]) -> str:
    """``key=value`` pairs on one line (logfmt); values with spaces, quotes or ``=`` JSON-quoted."""
    return " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


@dataclass(frozen=True)
class RunResult:
    """How one run went.

    Attributes:
        number: 1 for the scheduler's first run.
        scheduled: the fire time it ran for; None for ``run_now``'s run.
        started: when the child started (aware, the scheduler's zone).
        seconds: how long it ran.
        exit_code: the child's exit status, negative for a signal; None when it could not start.
        record: the JSON object it printed on stdout, if any.
        last_stderr: its last stderr line with text in it (redacted).
        stopped_by: the signal the scheduler sent it to stop it, if any.
    """

    number: int
    scheduled: datetime | None
    started: datetime
    seconds: float
    exit_code: int | None
    record: dict[str, Any] | None
    last_stderr: str
    stopped_by: str | None = None

    @property
    def outcome(self) -> str:
        """What the exit code means: ``EXIT_MEANINGS``, ``killed-by-SIG…``, or ``not-started``."""
        if self.exit_code is None:
            return "not-started"
        if self.exit_code < 0:
            return f"killed-by-{_signal_name(-self.exit_code)}"
        return EXIT_MEANINGS.get(self.exit_code, "failed")

    @property
    def ok(self) -> bool:
        """The command ran to an expected end (exit 0 or 3)."""
        return self.exit_code in (0, 3)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal-{number}"


class Scheduler:
    """Runs ``command`` at the fire times of ``cron``, one run at a time, until stopped.

    Args:
        cron: a croniter expression, 5 fields or 6 with seconds first.
        command: the argv of each run (no shell).
        timezone: IANA name of the zone the cron times are in; None: the local zone.
        max_runs: stop after this many runs (None: never).
        run_now: run once at start, then follow the schedule (counts towards ``max_runs``).
        stop_timeout: seconds a run gets to end after SIGTERM before its process group is killed.
        forward_stderr: copy the child's stderr lines to this process's stderr.
        redact: applied to every child line and to the command before they are logged.

    Raises:
        ValueError: an argument is invalid; the message names it and the value received.
    """

    def __init__(self, cron: str, *, command: Sequence[str], timezone: str | None = None,
                 max_runs: int | None = None, run_now: bool = False, stop_timeout: float = 60.0,
                 forward_stderr: bool = True, redact: Callable[[str], str] | None = None) -> None:
        if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
            raise ValueError(f"Invalid value for `command`: {command!r}. Expected a non-empty list of strings.")
        if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1):
            raise ValueError(f"Invalid value for `max_runs`: {max_runs!r}. Expected a positive integer or None.")
        if not stop_timeout > 0:
            raise ValueError(f"Invalid value for `stop_timeout`: {stop_timeout!r}. Expected a positive number.")
        self.zone = resolve_timezone(timezone)
        _check_cron(cron, self.zone)
        self.cron = cron
        self.command = list(command)
        self.max_runs = max_runs
        self.run_now = run_now
        self.stop_timeout = float(stop_timeout)
        self.forward_stderr = forward_stderr
        self._redact = redact or (lambda text: text)
        self._stop_signal: signal.Signals | None = None
        self._stop_requests = 0
        self._wake_fds: tuple[int, int] | None = None

    def run(self) -> int:
        """Follow the schedule until ``max_runs`` runs are done or a stop is requested.

        Returns:
            0 after ``max_runs`` runs or SIGTERM, 130 after SIGINT. Runs' own exit codes are in
            their log lines, never here.
        """
        with self._wakeable():
            runs = 0
            cursor = self._now()
            log.info(format_fields({"schedule": "started", "cron": self.cron, "timezone": str(self.zone),
                                    "next_run": "now" if self.run_now else next_fire_time(self.cron, cursor),
                                    "max_runs": self.max_runs, "command": self._redact(shlex.join(self.command))}))
            while self._stop_signal is None and (self.max_runs is None or runs < self.max_runs):
                fire = None if (self.run_now and runs == 0) else next_fire_time(self.cron, cursor)
                if fire is not None and not self._wait_until(fire):
                    break
                runs += 1
                result = self._run_once(runs, fire)
                cursor = self._now()
                skipped = _count_fire_times(self.cron, fire or result.started, cursor)
                more = self._stop_signal is None and (self.max_runs is None or runs < self.max_runs)
                self._log_result(result, skipped, next_fire_time(self.cron, cursor) if more else None)
        reason = self._stop_signal.name if self._stop_signal else "max-runs"
        log.info(format_fields({"schedule": "stopped", "reason": reason, "runs": runs}))
        return 130 if self._stop_signal == signal.SIGINT else 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask :meth:`run` to stop as if sent ``signum``; safe from signal handlers and other threads."""
        if self._stop_signal is None:
            self._stop_signal = signal.Signals(signum)
        self._stop_requests += 1
        fds = self._wake_fds
        if fds is not None:
            with contextlib.suppress(OSError):
                os.write(fds[1], b"\0")

    def _now(self) -> datetime:
        return datetime.now(self.zone)

    @contextlib.contextmanager
    def _wakeable(self) -> Iterator[None]:
        """A self-pipe that wakes :meth:`_sleep`; SIGTERM/SIGINT handlers when on the main thread.

        The handlers only set a flag (no locks, so no deadlock with the interrupted code) and
        ``signal.set_wakeup_fd`` writes to the pipe, so a sleep ends the moment a signal lands.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wake_fds = (read_fd, write_fd)
        main = threading.current_thread() is threading.main_thread()
        previous: dict[int, Any] = {}
        old_wakeup = -1
        try:
            if main:
                old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
                for signum in (signal.SIGTERM, signal.SIGINT):
                    previous[signum] = signal.signal(signum, lambda number, _frame: self.stop(number))
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if main:
                signal.set_wakeup_fd(old_wakeup)
            self._wake_fds = None
            os.close(read_fd)
            os.close(write_fd)

    def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a stop request or a signal ends it at once."""
        assert self._wake_fds is not None
        read_fd = self._wake_fds[0]
        readable, _, _ = select.select([read_fd], [], [], max(seconds, 0.0))
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(read_fd, 4096):
                    pass

    def _wait_until(self, when: datetime) -> bool:
        """Sleep until the wall clock reaches ``when``; False when a stop came first."""
        target = when.timestamp()
        while self._stop_signal is None:
            remaining = target - time.time()
            if remaining <= 0:
                return True
            self._sleep(min(remaining, _MAX_SLEEP_SECONDS))
        return False

    def _run_once(self, number: int, scheduled: datetime | None) -> RunResult:
        started, clock = self._now(), time.monotonic()
        try:
            proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    env=child_env(), preexec_fn=death_signal())
        except (OSError, subprocess.SubprocessError) as e:
            return RunResult(number, scheduled, started, time.monotonic() - clock, None, None,
                             self._redact(f"could not start {self.command[0]}: {e}"))
        output = _ChildOutput(proc, forward=self.forward_stderr, redact=self._redact)
        stopped_by = self._supervise(proc, number)
        output.join()
        return RunResult(number, scheduled, started, time.monotonic() - clock, proc.returncode,
                         parse_run_record(output.stdout), output.last_line, stopped_by)

    def _supervise(self, proc: subprocess.Popen[bytes], number: int) -> str | None:
        """Wait for the child; on a stop request SIGTERM it, SIGKILL its group after the timeout."""
        terminated_at: float | None = None
        while proc.poll() is None:
            if self._stop_signal is not None and terminated_at is None:
                log.info(format_fields({"run": number, "stopping": "SIGTERM", "pid": proc.pid,
                                        "wait_s": self.stop_timeout}))
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                terminated_at = time.monotonic()
            elif terminated_at is not None and (time.monotonic() - terminated_at > self.stop_timeout
                                                or self._stop_requests > 1):
                log.warning(format_fields({"run": number, "stopping": "SIGKILL", "pid": proc.pid,
                                           "after_s": round(time.monotonic() - terminated_at, 1)}))
                _kill_group(proc)
                return "SIGKILL"
            self._sleep(_POLL_SECONDS)
        return "SIGTERM" if terminated_at is not None else None

    def _log_result(self, result: RunResult, skipped: int, next_run: datetime | None) -> None:
        fields: dict[str, Any] = {
            "run": result.number, "exit": result.exit_code, "outcome": result.outcome,
            "scheduled": result.scheduled or "now", "start": result.started.isoformat(timespec="milliseconds"),
            "duration_s": round(result.seconds, 2),
        }
        if result.stopped_by:
            fields["stopped_by"] = result.stopped_by
        if result.record is not None:
            fields.update(record_fields(result.record))
        else:
            fields["last_stderr"] = result.last_stderr
        fields["skipped"] = f"{skipped}+" if skipped >= _SKIPPED_CAP else skipped
        if next_run is not None:
            fields["next_run"] = next_run
        log.log(logging.INFO if result.ok else logging.WARNING, format_fields(fields))


class _ChildOutput:
    """Drains a child's pipes on two threads: stdout kept (its tail) for the run record, stderr
    forwarded line by line with its last line of text kept."""

    def __init__(self, proc: subprocess.Popen[bytes], *, forward: bool, redact: Callable[[str], str]) -> None:
        self._forward, self._redact = forward, redact
        self._stdout = bytearray()
        self.last_line = ""
        self._threads = [threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
                         threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def stdout(self) -> str:
        return self._stdout.decode("utf-8", errors="replace")

    def join(self, timeout: float = 5.0) -> None:
        """Wait for both pipes to close (a grandchild may hold them open: then stop waiting)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _read_stdout(self, pipe: Any) -> None:
        with pipe:
            for chunk in iter(lambda: pipe.read1(65536), b""):
                self._stdout += chunk
                if len(self._stdout) > _STDOUT_LIMIT:
                    del self._stdout[: len(self._stdout) - _STDOUT_LIMIT]

    def _read_stderr(self, pipe: Any) -> None:
        with pipe:
            for raw in pipe:
                line = self._redact(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                if self._forward:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.write(line + "\n")
                        sys.stderr.flush()
                text = line.strip(" \t│┃|╭╮╰╯─━")  # a framed usage error's text, not its border
                if any(c.isalnum() for c in text):
                    self.last_line = text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (it leads one: ``start_new_session``) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
