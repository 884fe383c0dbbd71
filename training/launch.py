"""The same training on a real cluster: TF_CONFIG per task, Kubernetes objects, Vertex AI pools.

Pure functions building plain dicts (``shardflow cluster spec`` renders them); nothing here
imports TensorFlow or talks to a cluster.

Addresses are the stable DNS names a headless Kubernetes Service gives its pods:
``<name>-<type>-<index>.<name>:<port>``. Each pod sets ``hostname: <name>-<type>-<index>`` and
``subdomain: <name>``; one headless Service named ``<name>`` selects them all. That pair is what
gives a *bare Pod or a Job's pod* a DNS record (their pod names carry random suffixes and get
none; a StatefulSet would name its pods itself but restarts them always, wrong for the chief and
the workers, whose Jobs must be able to finish). ``publishNotReadyAddresses`` publishes the
records as soon as the pods have addresses, before they serve (workers first prepare their
shards). One Service per task would work too, at the price of M + N + 1 Services.

ps tasks are Deployments (replicas 1, restarted whatever their exit; ``Recreate`` so two pods never
hold the same name); the chief and the workers are ``batch/v1`` Jobs with ``restartPolicy:
OnFailure``. A lost ps makes the chief exit with :data:`~shardflow.training.cluster.EXIT_RESTART`
(75): its Job restarts it and it resumes from the last committed checkpoint.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import yaml

from shardflow.storage.urls import redact_url

from .config import TrainConfig

__all__ = [
    "CONFIG_DIR", "CONFIG_FILE", "DEFAULT_BACKOFF_LIMIT", "DEFAULT_MACHINE_TYPE", "DEFAULT_NAME", "DEFAULT_PORT",
    "EXIT_RESTART", "check_layout", "check_reference", "cluster_addresses", "container_config",
    "deployment_warnings", "kubernetes_manifests", "kubernetes_yaml", "tf_configs", "vertex_worker_pools",
]

DEFAULT_NAME = "shardflow-train"
DEFAULT_PORT = 2222
DEFAULT_MACHINE_TYPE = "n1-standard-8"
DEFAULT_BACKOFF_LIMIT = 6  # Kubernetes' own default for a Job
CONFIG_DIR = "/config"
CONFIG_FILE = "train.yaml"
EXIT_RESTART = 75  # shardflow.training.cluster.EXIT_RESTART, not imported: that module is heavier

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label, what Service names must be
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_MAX = 63
_JOBS = ("chief", "worker", "ps")
_ENV = {"GRPC_FAIL_FAST": "use_caller"}  # as the local cluster runs its tasks: calls fail fast, closures are retried


# -- checks and names --------------------------------------------------------------------------
def _positive(value: int, option: str, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid value for `{option}`: {value!r}. Expected a positive integer ({why}).")


def check_layout(*, name: str, workers: int, ps: int, port: int) -> None:
    """Check the cluster's shape and names before anything is built.

    Args:
        name: The job's name: the Service name and the prefix of every object and host name.
        workers: Worker tasks.
        ps: Parameter-server tasks.
        port: The gRPC port every task listens on.

    Raises:
        ValueError: a value Kubernetes or ParameterServerStrategy would refuse, naming the option.
    """
    _positive(workers, "--workers", "ParameterServerStrategy needs at least one worker")
    _positive(ps, "--ps", "ParameterServerStrategy needs at least one parameter server")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"Invalid value for `--port`: {port!r}. Expected a port number 1..65535.")
    if not _DNS_LABEL.match(name) or len(name) > _LABEL_MAX:
        raise ValueError(f"Invalid value for `--name`: {name!r}. Expected a DNS label (RFC 1035, what a Kubernetes "
                         "Service name must be): lower-case letters, digits and '-', starting with a letter, ending "
                         f"with a letter or digit, at most {_LABEL_MAX} characters.")
    longest = max(_host(name, "chief", 0), _host(name, "worker", workers - 1), _host(name, "ps", ps - 1), key=len)
    if len(longest) > _LABEL_MAX:
        raise ValueError(f"Invalid value for `--name`: {name!r}. It makes the host name {longest!r}, longer than "
                         f"the {_LABEL_MAX} characters of a DNS label; choose a shorter name.")


def check_reference(value: str | None, option: str) -> None:
    """Check a Kubernetes namespace or Secret name (a DNS subdomain, at most 253 characters).

    Raises:
        ValueError: ``value`` is not one, naming ``option``.
    """
    if value is not None and (not _DNS_SUBDOMAIN.match(value) or len(value) > 253):
        raise ValueError(f"Invalid value for `{option}`: {value!r}. Expected a Kubernetes name: lower-case letters, "
                         "digits, '-' and '.', starting and ending with a letter or digit.")


def _host(name: str, job: str, index: int) -> str:
    return f"{name}-{job}-{index}"


def _task_names(workers: int, ps: int) -> list[tuple[str, int]]:
    return [("chief", 0)] + [("worker", i) for i in range(workers)] + [("ps", i) for i in range(ps)]


# -- TF_CONFIG ---------------------------------------------------------------------------------
def cluster_addresses(*, name: str, workers: int, ps: int, port: int = DEFAULT_PORT) -> dict[str, list[str]]:
    """TF_CONFIG's ``cluster``: each job's task addresses, the headless Service's stable DNS names.

    Args:
        name: The job's name (the headless Service, the host-name prefix).
        workers: Worker tasks.
        ps: Parameter-server tasks.
        port: The gRPC port every task listens on.

    Returns:
        ``{"chief": [...], "worker": [...], "ps": [...]}`` of ``host:port`` strings.
    """
    counts = {"chief": 1, "worker": workers, "ps": ps}
    return {job: [f"{_host(name, job, i)}.{name}:{port}" for i in range(counts[job])] for job in _JOBS}


def tf_configs(*, name: str = DEFAULT_NAME, workers: int, ps: int, port: int = DEFAULT_PORT) -> dict[str, dict[str, Any]]:
    """The TF_CONFIG of every task of the job.

    Args:
        name: The job's name (the headless Service, the host-name prefix).
        workers: Worker tasks (at least 1).
        ps: Parameter-server tasks (at least 1).
        port: The gRPC port every task listens on.

    Returns:
        Task name (``chief-0``, ``worker-0`` …, ``ps-0`` …) to its TF_CONFIG object, in that order.

    Raises:
        ValueError: a bad name, count or port.
    """
    check_layout(name=name, workers=workers, ps=ps, port=port)
    cluster = cluster_addresses(name=name, workers=workers, ps=ps, port=port)
    return {f"{job}-{i}": {"cluster": cluster, "task": {"type": job, "index": i}} for job, i in _task_names(workers, ps)}


# -- the config the containers read ------------------------------------------------------------
def container_config(config: TrainConfig, *, workers: int, ps: int) -> dict[str, Any]:
    """The resolved training config every task reads: ``cluster: tf-config``, no ``storage_options``.

    Secrets never go into a manifest: credentials reach the pods from the environment (a
    Kubernetes Secret, workload identity), where s3fs, gcsfs and adlfs look for them.

    Args:
        config: The training config.
        workers: Worker tasks (recorded for people; TF_CONFIG is what the job follows).
        ps: Parameter-server tasks (likewise).

    Raises:
        ValueError: a URL of the config carries a password or a signed-query secret.
    """
    dumped = config.model_dump(mode="json", exclude={"storage_options"})
    for field, value in _strings(dumped):
        if redact_url(value) != value:
            raise ValueError(f"Invalid value for `{field}`: {redact_url(value)!r}. It carries a secret, and secrets "
                             "never go into cluster specs: give credentials through the environment (--secret).")
    return {**dumped, "cluster": "tf-config", "workers": workers, "ps": ps}


def _strings(node: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Every string of a dumped config with its dotted field name (``warm_start.checkpoint_dir``)."""
    found = []
    for key, value in node.items():
        if isinstance(value, dict):
            found += _strings(value, f"{prefix}{key}.")
        elif isinstance(value, str):
            found.append((f"{prefix}{key}", value))
    return found


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith(("file://", "local://"))


def deployment_warnings(config: TrainConfig, *, secret: str | None = None) -> list[str]:
    """What will not work as expected on a cluster: local paths that only one machine has, and
    storage options that stay behind.

    Args:
        config: The training config.
        secret: The Kubernetes Secret the pods get their credentials from, if any.

    Returns:
        One sentence per problem (empty when every URL is an object-store URL).
    """
    found = []
    if _is_local(config.data):
        found.append(f"`data` is a local path ({config.data}): every worker pod must see it there (a mounted volume); "
                     "an object-store URL (s3://, gs://, az://) needs nothing mounted.")
    checkpoints = config.resolved_checkpoint_dir()
    if _is_local(checkpoints):
        found.append(f"checkpoints go to a local path in the chief's container ({checkpoints}), lost when it "
                     "restarts; set `checkpoint_dir` to an object-store URL so a restarted chief resumes from them.")
    if config.storage_options and not secret:
        found.append("`storage_options` are left out of the spec (secrets never go into it): give the pods "
                     "credentials through their environment (Kubernetes: --secret NAME, a Secret holding e.g. "
                     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; Vertex AI: the job's service account).")
    return found


def _env() -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in _ENV.items()]


def _command(job: str, config_path: str) -> list[str]:
    if job == "chief":
        return ["train", config_path, "--tf-config"]
    return ["train-server", config_path]


# -- Kubernetes --------------------------------------------------------------------------------
def _labels(name: str, job: str | None = None, index: int | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "shardflow", "app.kubernetes.io/instance": name}
    if job is not None:
        labels["app.kubernetes.io/component"] = job
    if index is not None:
        labels["shardflow/task-index"] = str(index)
    return labels


def _metadata(object_name: str, labels: dict[str, str], namespace: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": object_name, "labels": labels}
    if namespace:
        metadata["namespace"] = namespace
    return metadata


def _container(job: str, *, image: str, tf_config: dict[str, Any], port: int, secret: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": job,
        "image": image,
        "command": ["shardflow"],
        "args": _command(job, posixpath.join(CONFIG_DIR, CONFIG_FILE)),
        "env": [{"name": "TF_CONFIG", "value": json.dumps(tf_config)}, *_env()],
        "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return container


def _pod_template(name: str, job: str, index: int, *, restart: str, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"labels": _labels(name, job, index)},
        "spec": {
            "hostname": _host(name, job, index),  # with `subdomain`: the DNS name <hostname>.<name>
            "subdomain": name,
            "restartPolicy": restart,
            "containers": [container],
            "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
        },
    }


def _service(name: str, port: int, namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, _labels(name), namespace),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": _labels(name),
                 "ports": [{"name": "grpc", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }


def _config_map(name: str, config_yaml: str, namespace: str | None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(f"{name}-config", _labels(name), namespace),
            "data": {CONFIG_FILE: config_yaml}}


def _ps_deployment(name: str, index: int, template: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(_host(name, "ps", index), _labels(name, "ps", index), namespace),
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": _labels(name, "ps", index)}, "template": template},
    }


def _job(name: str, job: str, index: int, template: dict[str, Any], *, backoff_limit: int,
         namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _metadata(_host(name, job, index), _labels(name, job, index), namespace),
        "spec": {"backoffLimit": backoff_limit, "template": template},
    }


def kubernetes_manifests(config: TrainConfig, *, image: str, workers: int, ps: int, name: str = DEFAULT_NAME,
                         port: int = DEFAULT_PORT, namespace: str | None = None, secret: str | None = None,
                         backoff_limit: int = DEFAULT_BACKOFF_LIMIT) -> list[dict[str, Any]]:
    """Plain Kubernetes objects running the training: ConfigMap, headless Service, ps, workers, chief.

    Args:
        config: The training config; the containers read it from a ConfigMap at ``/config``.
        image: The container image holding ``shardflow``.
        workers: Worker tasks (each a Job).
        ps: Parameter-server tasks (each a Deployment).
        name: The job's name (Service, object and host-name prefix); a DNS label.
        port: The gRPC port every task listens on.
        namespace: Set on every object when given.
        secret: A Secret whose keys become every container's environment (storage credentials).
        backoff_limit: Restarts a worker or chief Job allows before it fails.

    Returns:
        The objects, in the order to apply them.

    Raises:
        ValueError: a bad name, count, port, namespace, Secret name or image, or a secret in a URL.
    """
    check_layout(name=name, workers=workers, ps=ps, port=port)
    check_reference(namespace, "--namespace")
    check_reference(secret, "--secret")
    if not image or not image.strip():
        raise ValueError("Invalid value for `--image`: ''. Expected a container image holding shardflow.")
    if backoff_limit < 0:
        raise ValueError(f"Invalid value for `--backoff-limit`: {backoff_limit}. Expected 0 or more.")
    config_yaml = _yaml_text(container_config(config, workers=workers, ps=ps))
    objects = [_config_map(name, config_yaml, namespace), _service(name, port, namespace)]
    tasks = tf_configs(name=name, workers=workers, ps=ps, port=port)
    for job, index in sorted(_task_names(workers, ps), key=lambda t: ("ps", "worker", "chief").index(t[0])):
        container = _container(job, image=image, tf_config=tasks[f"{job}-{index}"], port=port, secret=secret)
        restart = "Always" if job == "ps" else "OnFailure"
        template = _pod_template(name, job, index, restart=restart, container=container)
        objects.append(_ps_deployment(name, index, template, namespace) if job == "ps" else
                       _job(name, job, index, template, backoff_limit=backoff_limit, namespace=namespace))
    return objects


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded config) as literal blocks, so the manifest stays readable."""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _block_strings)


def _yaml_text(value: Any) -> str:
    return yaml.dump(value, Dumper=_BlockDumper, sort_keys=False, width=1 << 16, allow_unicode=True)


def _header(manifests: list[dict[str, Any]], command: str | None) -> list[str]:
    service = next(m for m in manifests if m["kind"] == "Service")
    name, namespace = service["metadata"]["name"], service["metadata"].get("namespace")
    ns = f" -n {namespace}" if namespace else ""
    counts = {job: sum(m["metadata"]["labels"].get("app.kubernetes.io/component") == job for m in manifests)
              for job in _JOBS}
    return [
        f"shardflow training {name!r}: 1 chief, {counts['worker']} worker(s), {counts['ps']} ps "
        "(ParameterServerStrategy), as plain Kubernetes objects (Kubeflow's TFJob is deprecated upstream).",
        f"Apply: {command or 'shardflow cluster spec ...'} | kubectl{ns} apply -f -",
        f"Addresses: the headless Service {name!r} (clusterIP: None) selects every pod of the job; each pod sets",
        f"  `hostname: {name}-<type>-<index>` and `subdomain: {name}`, which is what gives a bare Pod or a Job's pod",
        f"  the stable DNS name {name}-worker-0.{name} that TF_CONFIG names (their pod names are random and",
        "  get no record; a StatefulSet would restart the chief and workers even after they succeed).",
        "Restarts: each ps is a Deployment (replicas 1, restarted whenever it dies). A lost ps makes the chief",
        f"  exit with code {EXIT_RESTART}; its Job (restartPolicy: OnFailure) restarts it and it resumes from the",
        "  last committed checkpoint (so `checkpoint_dir` must be an object-store URL). A worker that dies is",
        "  restarted by its Job and rejoins.",
        "Credentials: none in here (the config's storage_options are left out); `--secret NAME` adds",
        "  `envFrom: secretRef` to every container, e.g. a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.",
        f"Done when job/{name}-chief-0 completes; the ps and workers serve until deleted:",
        f"  kubectl{ns} wait --for=condition=complete --timeout=-1s job/{name}-chief-0",
        f"  kubectl{ns} delete deployment,job,service,configmap -l app.kubernetes.io/instance={name}",
    ]


def kubernetes_yaml(manifests: list[dict[str, Any]], *, command: str | None = None) -> str:
    """The objects as one multi-document YAML for ``kubectl apply -f -``, behind a comment header.

    Args:
        manifests: What :func:`kubernetes_manifests` returned.
        command: The command line that made them, shown in the header's ``kubectl apply`` line.
    """
    header = "".join(f"# {line}\n" for line in _header(manifests, command))
    return header + "".join(f"---\n{_yaml_text(m)}" for m in manifests)


# -- Vertex AI ---------------------------------------------------------------------------------
def vertex_worker_pools(*, image: str, workers: int, ps: int, machine_type: str = DEFAULT_MACHINE_TYPE,
                        config_path: str = posixpath.join(CONFIG_DIR, CONFIG_FILE)) -> list[dict[str, Any]]:
    """A Vertex AI CustomJob's ``workerPoolSpecs``: chief, workers, ps, in the order Vertex reads them.

    Vertex sets TF_CONFIG itself: workerpool0 is ``chief``, workerpool1 ``worker``, workerpool2 ``ps``.

    Args:
        image: The container image holding ``shardflow``.
        workers: Worker replicas.
        ps: Parameter-server replicas.
        machine_type: The Compute Engine machine type of every pool.
        config_path: Where the containers find the training config (in the image, or under
            ``/gcs/BUCKET/`` where Vertex mounts Cloud Storage).

    Raises:
        ValueError: a bad count, image, machine type or config path.
    """
    check_layout(name=DEFAULT_NAME, workers=workers, ps=ps, port=DEFAULT_PORT)
    for option, value in (("--image", image), ("--machine-type", machine_type)):
        if not value or not value.strip():
            raise ValueError(f"Invalid value for `{option}`: {value!r}. Expected a non-empty value.")
    if not config_path.startswith("/"):
        raise ValueError(f"Invalid value for `--config-path`: {config_path!r}. Expected an absolute path in the "
                         "container (e.g. /gcs/BUCKET/train.yaml).")
    counts = {"chief": 1, "worker": workers, "ps": ps}
    return [{"machineSpec": {"machineType": machine_type}, "replicaCount": counts[job],
             "containerSpec": {"imageUri": image, "command": ["shardflow"], "args": _command(job, config_path),
                               "env": _env()}}
            for job in _JOBS]
