"""Which ``tf.distribute`` strategy a job runs under, and the TF_CONFIG that describes a cluster.

By the hardware present, unless the config names one: a cluster with ps tasks →
ParameterServerStrategy (its workers may have GPUs); a TPU → TPUStrategy; several GPUs on
this host → MirroredStrategy; otherwise the default strategy. The model and input code are
the same under all of them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ClusterSpec", "parse_tf_config", "select_strategy", "make_strategy", "server_config"]

_ADDRESS = re.compile(r"^[A-Za-z0-9.\-_\[\]:]+:\d{1,5}$")
_JOBS = ("chief", "worker", "ps", "evaluator")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed, checked TF_CONFIG."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def workers(self) -> int:
        return len(self.cluster.get("worker", []))

    @property
    def ps(self) -> int:
        return len(self.cluster.get("ps", []))

    def to_json(self) -> str:
        return json.dumps({"cluster": self.cluster, "task": {"type": self.task_type, "index": self.task_index}})


def parse_tf_config(text: str | None = None) -> ClusterSpec:
    """Parse TF_CONFIG (the environment variable when ``text`` is None).

    Raises:
        ValueError: it is missing or malformed, saying what is wrong.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError("TF_CONFIG is not set; --tf-config needs it to describe the cluster "
                         '(e.g. {"cluster": {"chief": [...], "worker": [...], "ps": [...]}, "task": {"type": "chief", "index": 0}}).')
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict) or not data["cluster"]:
        raise ValueError("TF_CONFIG must be a JSON object with a non-empty `cluster` mapping of job name to addresses.")
    cluster: dict[str, list[str]] = {}
    for job, addresses in data["cluster"].items():
        if job not in _JOBS:
            raise ValueError(f"TF_CONFIG.cluster has job {job!r}; expected some of {list(_JOBS)}.")
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG.cluster.{job} must be a non-empty list of 'host:port' addresses, got {addresses!r}.")
        for i, address in enumerate(addresses):
            if not isinstance(address, str) or not _ADDRESS.match(address):
                raise ValueError(f"TF_CONFIG.cluster.{job}[{i}] is {address!r}, not a 'host:port' address.")
        cluster[job] = list(addresses)
    task = data.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError('TF_CONFIG needs a `task` object like {"type": "worker", "index": 0}.')
    task_type, task_index = task["type"], task.get("index", 0)
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG.task.type is {task_type!r}, which is not a job in the cluster {sorted(cluster)}.")
    if not isinstance(task_index, int) or isinstance(task_index, bool) or not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG.task.index is {task_index!r}; job {task_type!r} has "
                         f"{len(cluster[task_type])} task(s), so it must be 0..{len(cluster[task_type]) - 1}.")
    if "ps" in cluster and "worker" not in cluster:
        raise ValueError("TF_CONFIG.cluster has ps tasks but no worker tasks.")
    return ClusterSpec(cluster=cluster, task_type=task_type, task_index=task_index)


def select_strategy(requested: str, *, cluster: ClusterSpec | None, tpus: int, gpus: int) -> str:
    """The strategy to use: ``requested`` unless it is ``"auto"``, else by the hardware present.

    Raises:
        ValueError: ``parameter_server`` without a cluster that has ps tasks.
    """
    if requested == "parameter_server" and (cluster is None or not cluster.ps):
        raise ValueError("Invalid value for `strategy`: 'parameter_server' needs a cluster with ps tasks "
                         "(--cluster local, or --tf-config with ps in TF_CONFIG).")
    if requested != "auto":
        return requested
    if cluster is not None and cluster.ps:
        return "parameter_server"
    if tpus:
        return "tpu"
    if gpus > 1:
        return "mirrored"
    return "default"


def server_config(workers: int) -> Any:
    """The ConfigProto for ps/worker servers and the coordinator: enough inter-op threads that a
    worker's scheduled steps never wait on each other (DESIGN.md fact 2)."""
    from ._tf import tf

    return tf.compat.v1.ConfigProto(inter_op_parallelism_threads=max(8, workers + 1))


def make_strategy(requested: str, *, cluster: ClusterSpec | None, min_shard_bytes: int) -> tuple[Any, str]:
    """Build the strategy; returns ``(strategy, name)``."""
    from . import quiet_native_stderr
    from ._tf import tf

    with quiet_native_stderr():  # the first look at devices probes CUDA, noisily where there is none
        tpus, gpus = len(tf.config.list_logical_devices("TPU")), len(tf.config.list_physical_devices("GPU"))
    name = select_strategy(requested, cluster=cluster, tpus=tpus, gpus=gpus)
    if name == "parameter_server":
        assert cluster is not None
        os.environ["TF_CONFIG"] = cluster.to_json()
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=min_shard_bytes, max_shards=cluster.ps)
        return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner), name
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), name
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(), name
    return tf.distribute.get_strategy(), name
