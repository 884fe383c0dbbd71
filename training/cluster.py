"""Real clusters of ps and worker processes: serving one task, and launching a local cluster.

``serve`` runs one ps or worker task described by TF_CONFIG (``shardflow train-server``): a
worker first prepares the shards it will read (fetch, decode), then serves.

``LocalCluster`` is the supervisor behind ``shardflow train --cluster local``: it starts
every ps and worker as its own OS process on 127.0.0.1 (free ports), then the coordinator as
one more process (``shardflow train --tf-config``, TF_CONFIG task ``chief``). It stays
outside the coordinator because a lost ps can only be recovered by new ps *and* coordinator
processes restoring from the last checkpoint (DESIGN.md fact 8): the coordinator then exits
with :data:`EXIT_RESTART` and the supervisor starts them again. A worker that dies is
restarted on its address and rejoins. Every process it started is stopped on success, on
error, on Ctrl-C and on SIGTERM, and ends by itself when the supervisor is killed outright
(:mod:`shardflow.children`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import yaml

from shardflow.children import child_env, death_signal
from shardflow.storage import ShardflowError

from .config import TrainConfig
from .failures import SUPERVISED_ENV, take_failure
from .strategy import ClusterSpec, server_config
from .watchdog import take_stall

__all__ = ["EXIT_RESTART", "LocalCluster", "TaskFailedError", "TrainingFailedError", "serve", "prepare_worker"]

log = logging.getLogger(__name__)

EXIT_RESTART = 75  # the coordinator lost a ps: restart ps and coordinator from the last checkpoint
_READY_TIMEOUT = 300.0


class TrainingFailedError(ShardflowError):
    """The coordinator failed and noted why (:mod:`.failures`); the message is that one line."""


class TaskFailedError(ShardflowError):
    """A ps or worker process of a local cluster failed before it served; the message has its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_worker(config: TrainConfig, spec: ClusterSpec) -> int:
    """Make this worker's training shards readable here (fetch remote ones, decode Parquet).
    Returns how many shards it will read."""
    from .inputs import InputSpec, ShardReader, choose_format, training_data, worker_shards

    dataset = training_data(config)
    inputs = InputSpec.from_dataset(dataset, config.label)
    fmt = choose_format(dataset, config.train_split, config.format)
    shards = [s for s in dataset.shards(config.train_split) if s.format.startswith(fmt)]
    mine, _ = worker_shards(shards, spec.task_index, spec.workers)
    ShardReader(dataset, inputs, cache_dir=config.resolved_cache_dir(), cache_bytes=config.cache_bytes).prepare(mine)
    return len(mine)


def serve(spec: ClusterSpec, config: TrainConfig | None) -> None:
    """Run the ps or worker task ``spec`` names until the process is stopped."""
    if spec.task_type not in ("ps", "worker"):
        raise ValueError(f"TF_CONFIG.task.type is {spec.task_type!r}; `shardflow train-server` runs ps and worker "
                         "tasks (the chief runs `shardflow train --tf-config`).")
    if spec.task_type == "worker" and config is not None:
        count = prepare_worker(config, spec)
        log.info("worker %d: %d shard(s) ready", spec.task_index, count)
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    from ._tf import tf

    server = tf.distribute.Server(tf.train.ClusterSpec(spec.cluster), job_name=spec.task_type,
                                  task_index=spec.task_index, protocol="grpc", config=server_config(spec.workers),
                                  start=True)
    log.info("%s %d serving at %s", spec.task_type, spec.task_index, server.target)
    server.join()


@dataclass
class _Task:
    job: str
    index: int
    address: str
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)


class LocalCluster:
    """Supervises a local ps/worker cluster and its coordinator; see the module docstring."""

    def __init__(self, config: TrainConfig) -> None:
        """
        Args:
            config: The training config (``workers``, ``ps``, ``max_restarts``, ``run_dir`` ...).
        """
        self.config = config
        self.log_dir = os.path.join(config.run_dir, "logs")
        self.tasks: list[_Task] = []
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._config_yaml = b""  # what every task reads on its stdin (start_tasks)

    # -- processes -----------------------------------------------------------------------------
    def task_env(self, cluster: dict[str, list[str]], job: str, index: int) -> dict[str, str]:
        """The environment a task of this cluster runs in: TF_CONFIG naming it, calls that fail fast."""
        env = child_env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": job, "index": index}})
        env["GRPC_FAIL_FAST"] = "use_caller"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if job == "chief":
            env[SUPERVISED_ENV] = "1"
        return env

    def _spawn(self, command: str, env: dict[str, str], **streams: Any) -> subprocess.Popen[bytes]:
        """``python -m shardflow COMMAND -``, its config (secrets included) written to its stdin:
        never to a file, which a killed supervisor would leave behind."""
        process = subprocess.Popen([sys.executable, "-m", "shardflow", command, "-"], env=env, stdin=subprocess.PIPE,
                                   start_new_session=True, preexec_fn=death_signal(signal.SIGKILL), **streams)
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: polling sees its exit code
            process.stdin.write(self._config_yaml)
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        return process  # SIGKILL as its parent-death signal: one stopped by SIGSTOP ends too

    def _start_task(self, task: _Task, cluster: dict[str, list[str]]) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        if task.log_file is None:
            task.log_file = open(os.path.join(self.log_dir, f"{task.job}-{task.index}.log"), "ab")
        task.process = self._spawn("train-server", self.task_env(cluster, task.job, task.index),
                                   stdout=task.log_file, stderr=subprocess.STDOUT)

    def _log_tail(self, task: _Task, lines: int = 15) -> str:
        try:
            with open(os.path.join(self.log_dir, f"{task.job}-{task.index}.log"), "rb") as f:
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        """Wait until every task accepts connections (workers first prepare their shards)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        waiting = list(self.tasks)
        while waiting:
            task = waiting[0]
            assert task.process is not None
            if task.process.poll() is not None:
                raise TaskFailedError(f"{task.job} {task.index} exited with code {task.process.returncode} before serving; "
                                   f"its log ({self.log_dir}):\n{self._log_tail(task)}")
            host, port = task.address.rsplit(":", 1)
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task.job} {task.index} did not start serving within {_READY_TIMEOUT:.0f} s; "
                                   f"its log:\n{self._log_tail(task)}")
            time.sleep(0.2)

    @staticmethod
    def _stop(*processes: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
        """SIGTERM to each process group at once, SIGKILL to those still running after ``grace`` seconds."""
        running = [p for p in processes if p is not None and p.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def stop(self) -> None:
        """Stop the coordinator, then every task (idempotent)."""
        self._stop(self.coordinator)  # first, so it does not report the tasks' end as a lost cluster
        self._stop(*(task.process for task in self.tasks))
        for task in self.tasks:
            if task.log_file is not None:
                task.log_file.close()
                task.log_file = None

    @staticmethod
    @contextlib.contextmanager
    def _signals() -> Iterator[None]:
        """Ctrl-C and SIGTERM raise KeyboardInterrupt once, so the cleanup in :meth:`run` runs for
        both; later ones (a shell signalling the whole process group, an impatient user) are
        ignored, then and after, so they cannot cut the cleanup or the caller's exit short. A
        SIGINT ignored from the start (a background job of a script) stays ignored."""
        interrupted = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal interrupted
            if not interrupted:
                interrupted = True
                raise KeyboardInterrupt

        signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) != signal.SIG_IGN else [])
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_IGN if interrupted else handler)

    # -- supervision ---------------------------------------------------------------------------
    def run(self) -> int:
        """Run the job to the end; returns the coordinator's exit code (0: success)."""
        with self._signals():  # held through the cleanup, so a second signal cannot cut it short
            try:
                while True:
                    code = self._attempt()
                    stalled = take_stall(self.config.run_dir, self.restarts + 1) if code else None
                    if (code == EXIT_RESTART or stalled) and self.restarts < self.config.max_restarts:
                        self.restarts += 1
                        why = (f"Training stalled: a call into the cluster blocked for {self.config.stall_seconds:g} s "
                               f"(a task hung: stopped, deadlocked or unreachable; tracebacks in {stalled})"
                               if stalled else "A parameter server was lost")
                        log.warning("%s; restarting every task from the last checkpoint (restart %d of %d).",
                                    why, self.restarts, self.config.max_restarts)
                        continue
                    reason = take_failure(self.config.run_dir) if code else None
                    if reason:  # the coordinator said why: that is the line to end on, not its exit code
                        raise TrainingFailedError(reason)
                    if stalled or code == EXIT_RESTART:
                        raise TrainingFailedError(
                            f"{'training stalled (a task hung; tracebacks in ' + stalled + ')' if stalled else 'a parameter server was lost'} "
                            f"after {self.restarts} restart(s), `max_restarts`; resume from the last committed checkpoint by "
                            "running the same command")
                    return code
            finally:
                self.stop()

    def start_tasks(self) -> dict[str, list[str]]:
        """Start every ps and worker task on a free port of 127.0.0.1 (any left from before are
        stopped first) and wait until each serves; returns the cluster, a free ``chief`` address
        included. :meth:`stop` ends them. A coordinator of another kind (a benchmark's ``model.fit``)
        can join them with TF_CONFIG from :meth:`task_env`."""
        self.stop()
        self._config_yaml = yaml.safe_dump({**self.config.model_dump(mode="json"), "cluster": "tf-config"}).encode()
        jobs = {"ps": self.config.ps, "worker": self.config.workers}
        self.tasks = [_Task(job, i, f"127.0.0.1:{_free_port()}") for job, n in jobs.items() for i in range(n)]
        chief = f"127.0.0.1:{_free_port()}"
        cluster = {"chief": [chief], **{job: [t.address for t in self.tasks if t.job == job] for job in jobs}}
        for task in self.tasks:
            self._start_task(task, cluster)
        self._wait_ready()
        return cluster

    def _attempt(self) -> int:
        cluster = self.start_tasks()
        take_failure(self.config.run_dir)  # a reason left by an earlier attempt is not this one's
        take_stall(self.config.run_dir, 0)
        self.coordinator = self._spawn("train", self.task_env(cluster, "chief", 0))
        ps_lost_at: float | None = None
        while (code := self.coordinator.poll()) is None:
            for task in self.tasks:
                assert task.process is not None
                if task.process.poll() is None:
                    continue
                if task.job == "worker":  # rejoins on the same address; its steps are retried meanwhile
                    log.warning("worker %d exited with code %s; restarting it.", task.index, task.process.returncode)
                    self._start_task(task, cluster)
                elif ps_lost_at is None:
                    log.warning("ps %d exited with code %s.", task.index, task.process.returncode)
                    ps_lost_at = time.monotonic()
            if ps_lost_at is not None and time.monotonic() - ps_lost_at > 60:
                self._stop(self.coordinator)  # it should have noticed by now
                return EXIT_RESTART
            time.sleep(0.5)
        return EXIT_RESTART if ps_lost_at is not None and code != 0 else code
