"""`shardflow cluster spec`, run as a user runs it: the real console script. Kubernetes objects are
checked against the real Kubernetes object schemas (kubernetes-validate), TF_CONFIG by the parser
the tasks use and by a real `train-server` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shardflow.training.config import load_train_config
from shardflow.training.strategy import parse_tf_config

from .conftest import run_cli

KUBERNETES_VERSION = "1.37.0"
SECRETS = ("AKIAEXAMPLE", "s3cr3t")


@pytest.fixture()
def train_yaml(tmp_path: Path) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"data": "s3://bucket/clicks", "checkpoint_dir": "s3://bucket/checkpoints",
                                    "batch_size": 512, "storage_options": {"key": SECRETS[0], "secret": SECRETS[1]}}))
    return str(path)


def _spec(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli("cluster", "spec", *args, check=check, timeout=60)


def _k8s(config: str, *args: str) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    proc = _spec(config, "--workers", "3", "--ps", "2", "--image", "registry.example/shardflow:1", *args)
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc is not None], proc


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _tf_config_of(obj: dict[str, Any]) -> str:
    (container,) = _pod_spec(obj)["containers"]
    (value,) = [e["value"] for e in container["env"] if e["name"] == "TF_CONFIG"]
    return value


def test_k8s_objects_are_valid_kubernetes_and_name_each_task(train_yaml: str, tmp_path: Path) -> None:
    objects, proc = _k8s(train_yaml, "--name", "clicks", "--namespace", "ml", "--secret", "s3-credentials")
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any schema violation
        assert obj["metadata"]["namespace"] == "ml"
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [("ConfigMap", "clicks-config"), ("Service", "clicks"), ("Deployment", "clicks-ps-0"),
                     ("Deployment", "clicks-ps-1"), ("Job", "clicks-worker-0"), ("Job", "clicks-worker-1"),
                     ("Job", "clicks-worker-2"), ("Job", "clicks-chief-0")]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["clusterIP"] == "None"
    pods = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    seen = set()
    for obj in pods:
        pod, labels = _pod_spec(obj), obj["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()  # the headless Service selects every task
        if obj["kind"] == "Deployment":  # a ps restarts whenever it dies
            assert obj["spec"]["replicas"] == 1 and pod["restartPolicy"] == "Always"
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
        else:
            assert pod["restartPolicy"] == "OnFailure" and obj["spec"]["backoffLimit"] >= 1
        spec = parse_tf_config(_tf_config_of(obj))  # a literal JSON string, as the task reads it
        assert spec.workers == 3 and spec.ps == 2 and len(spec.cluster["chief"]) == 1
        assert obj["metadata"]["name"] == f"clicks-{spec.task_type}-{spec.task_index}"
        assert (spec.task_type == "ps") == (obj["kind"] == "Deployment")
        # The pod's DNS name (hostname.subdomain, subdomain = the headless Service) is its TF_CONFIG address.
        assert pod["subdomain"] == service["metadata"]["name"]
        assert f"{pod['hostname']}.{pod['subdomain']}:2222" == spec.cluster[spec.task_type][spec.task_index]
        (container,) = pod["containers"]
        expected = ["train", "/config/train.yaml", "--tf-config"] if spec.task_type == "chief" else \
            ["train-server", "/config/train.yaml"]
        assert container["command"] == ["shardflow"] and container["args"] == expected
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert container["image"] == "registry.example/shardflow:1"
        seen.add((spec.task_type, spec.task_index))
    assert seen == {("chief", 0), ("worker", 0), ("worker", 1), ("worker", 2), ("ps", 0), ("ps", 1)}

    # The config the tasks read: the same training, `cluster: tf-config`, no storage options.
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    mounted = tmp_path / "mounted.yaml"
    mounted.write_text(config_map["data"]["train.yaml"])
    config = load_train_config(str(mounted))
    assert config.cluster == "tf-config" and config.storage_options == {}
    assert config.data == "s3://bucket/clicks" and config.batch_size == 512
    for obj in pods:
        (volume,) = _pod_spec(obj)["volumes"]
        assert volume["configMap"]["name"] == "clicks-config"
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr
    assert "exit with code 75" in proc.stdout and "restarts it" in proc.stdout  # the header says how a lost ps heals


def test_retrain_config_gives_its_training(tmp_path: Path) -> None:
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump({
        "retrain": {"raw": "s3://b/raw", "dataset": "s3://b/clicks", "checkpoint_dir": "s3://b/checkpoints",
                    "model_dir": "s3://b/models"},
        "pipeline": {}, "train": {"batch_size": 256},
        "storage_options": {"key": SECRETS[0], "secret": SECRETS[1]}}))
    objects, proc = _k8s(str(path))
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(config_map["data"]["train.yaml"])
    assert config["data"] == "s3://b/clicks" and config["checkpoint_dir"] == "s3://b/checkpoints"
    assert config["batch_size"] == 256 and "storage_options" not in config
    assert config["run_dir"] == "shardflow-run"  # not the retrain's scratch directory on this machine
    assert "--secret" in proc.stderr  # storage options left behind: it says where credentials come from
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _on_loopback(tf_config: dict[str, Any]) -> dict[str, Any]:
    """The same TF_CONFIG with every address moved to a free 127.0.0.1 port."""
    cluster = {job: [f"127.0.0.1:{_free_port()}" for _ in addresses] for job, addresses in tf_config["cluster"].items()}
    return {"cluster": cluster, "task": dict(tf_config["task"])}


def _wait_serving(proc: subprocess.Popen[bytes], address: str, *, timeout: float, log: Path) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train-server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            return
        time.sleep(0.2)
    raise AssertionError(f"train-server did not serve on {address} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_tf_config_of_every_task_and_real_servers_serve_them(train_yaml: str, tmp_path: Path) -> None:
    tasks = json.loads(_spec(train_yaml, "--workers", "2", "--ps", "2", "--format", "tf-config").stdout)
    assert list(tasks) == ["chief-0", "worker-0", "worker-1", "ps-0", "ps-1"]
    for task, tf_config in tasks.items():
        spec = parse_tf_config(json.dumps(tf_config))
        assert f"{spec.task_type}-{spec.task_index}" == task
        assert spec.cluster["worker"][1] == "shardflow-train-worker-1.shardflow-train:2222"
    config = tmp_path / "container.yaml"
    config.write_text(_spec(train_yaml, "--workers", "2", "--ps", "2", "--format", "config").stdout)

    # Every ps and worker task's TF_CONFIG, moved to 127.0.0.1 ports, served by a real train-server
    # (workers without the config: preparing their shards would need the job's bucket).
    procs: dict[str, subprocess.Popen[bytes]] = {}
    local = _on_loopback(tasks["ps-1"])
    try:
        for task in ("ps-0", "ps-1", "worker-0", "worker-1"):
            spec = parse_tf_config(json.dumps(tasks[task]))
            own = {"cluster": local["cluster"], "task": {"type": spec.task_type, "index": spec.task_index}}
            env = {**os.environ, "TF_CONFIG": json.dumps(own), "TF_CPP_MIN_LOG_LEVEL": "2"}
            args = [str(config)] if spec.task_type == "ps" else []
            with open(tmp_path / f"{task}.log", "wb") as log_file:
                procs[task] = subprocess.Popen([sys.executable, "-m", "shardflow", "train-server", *args], env=env,
                                               stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True)
        for task, proc in procs.items():
            job, index = task.split("-")
            _wait_serving(proc, local["cluster"][job][int(index)], timeout=90, log=tmp_path / f"{task}.log")
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert all(proc.returncode == -signal.SIGKILL for proc in procs.values())  # each was serving when stopped


def test_vertex_pools_chief_workers_ps(train_yaml: str) -> None:
    proc = _spec(train_yaml, "--workers", "4", "--ps", "2", "--image", "us-docker.pkg.dev/p/r/shardflow:1",
                 "--format", "vertex", "--config-path", "/gcs/bucket/train.yaml")
    pools = json.loads(proc.stdout)["workerPoolSpecs"]
    assert [p["replicaCount"] for p in pools] == [1, 4, 2]
    assert [p["containerSpec"]["args"] for p in pools] == [
        ["train", "/gcs/bucket/train.yaml", "--tf-config"], ["train-server", "/gcs/bucket/train.yaml"],
        ["train-server", "/gcs/bucket/train.yaml"]]
    for pool in pools:
        assert pool["machineSpec"] == {"machineType": "n1-standard-8"}
        assert pool["containerSpec"]["imageUri"] == "us-docker.pkg.dev/p/r/shardflow:1"
        assert pool["containerSpec"]["command"] == ["shardflow"]
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "Invalid value for `--workers`: 0"),
    (["--ps", "0"], "Invalid value for `--ps`: 0"),
    (["--name", "Train_Job"], "Invalid value for `--name`: 'Train_Job'"),
    (["--name", "x" * 60], "longer than the 63 characters"),
    (["--format", "helm"], "Invalid value for `--format`: 'helm'"),
    (["--unknown-field"], "Invalid value for `bogus`: 1. Extra inputs are not permitted"),
    (["--missing"], "does not exist"),
    (["--password-in-url"], "Invalid value for `data`: 's3://user:***@bucket/clicks'. It carries a secret"),
])
def test_bad_input_is_one_error_line(train_yaml: str, tmp_path: Path, args: list[str], message: str) -> None:
    config = train_yaml
    if args == ["--unknown-field"]:
        config, args = str(tmp_path / "bad.yaml"), []
        Path(config).write_text("data: s3://bucket/clicks\nbogus: 1\n")
    elif args == ["--missing"]:
        config, args = str(tmp_path / "nowhere.yaml"), []
    elif args == ["--password-in-url"]:
        config, args = str(tmp_path / "password.yaml"), []
        Path(config).write_text(f"data: s3://user:{SECRETS[1]}@bucket/clicks\n")
    proc = _spec(config, "--image", "img", *args, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and SECRETS[1] not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_importing_launch_does_not_import_tensorflow() -> None:
    code = "import sys, shardflow.training.launch; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
