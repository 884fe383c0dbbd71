"""``shardflow cluster``: what it takes to run the same training on a real cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from .common import err

cluster_app = typer.Typer(help="Describe the same training for a real cluster (TF_CONFIG, Kubernetes, Vertex AI).",
                          no_args_is_help=True)

_FORMATS = ("k8s", "vertex", "tf-config", "config")


def _load_config(path: str) -> Any:
    """The TrainConfig of a training config, or of a retrain config (one with a ``retrain:`` key).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not YAML, or invalid: one line naming the field and the value received.
    """
    from shardflow.training.config import load_train_config

    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text())
        if isinstance(data, dict) and "retrain" in data:
            from shardflow.retrain.config import load_retrain_config

            train = load_retrain_config(path).train
            # its run_dir is a scratch directory of this machine (`retrain.work_dir`): the pods get their own
            return train.model_copy(update={"run_dir": type(train).model_fields["run_dir"].default})
        return load_train_config(path)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None


@cluster_app.command("spec")
def spec_command(
    config_file: Annotated[str, typer.Argument(metavar="CONFIG.yaml",
                                               help="Training config, or a retrain config (top-level `retrain:`).")],
    workers: Annotated[Optional[int], typer.Option(help="Worker tasks (default: the config's `workers`).")] = None,
    ps: Annotated[Optional[int], typer.Option(help="Parameter-server tasks (default: the config's `ps`).")] = None,
    image: Annotated[Optional[str], typer.Option(help="Container image holding shardflow (k8s, vertex).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="k8s (manifests, YAML), vertex (workerPoolSpecs, "
                                               "JSON), tf-config (each task's TF_CONFIG, JSON) or config (the "
                                               "training config the containers read, YAML).")] = "k8s",
    name: Annotated[str, typer.Option(help="Job name: the headless Service and the prefix of every object and "
                                      "host name (a DNS label).")] = "shardflow-train",
    port: Annotated[int, typer.Option(help="gRPC port of every task.")] = 2222,
    namespace: Annotated[Optional[str], typer.Option(help="Kubernetes namespace of every object (k8s).")] = None,
    secret: Annotated[Optional[str], typer.Option(help="Kubernetes Secret whose keys become every container's "
                                                  "environment, e.g. AWS_ACCESS_KEY_ID (k8s).")] = None,
    backoff_limit: Annotated[int, typer.Option(help="Restarts a worker or chief Job allows before it fails (k8s).")] = 6,
    machine_type: Annotated[str, typer.Option(help="Machine type of every pool (vertex).")] = "n1-standard-8",
    config_path: Annotated[str, typer.Option(help="Where the containers find the training config (vertex): in the "
                                             "image, or /gcs/BUCKET/... for Cloud Storage.")] = "/config/train.yaml",
) -> None:
    """Print TF_CONFIG, Kubernetes objects or Vertex AI pools that run this training on a cluster.

    Storage secrets never go into the output: the config's storage_options are left out.
    """
    from shardflow.training import launch

    if output_format not in _FORMATS:
        raise ValueError(f"Invalid value for `--format`: {output_format!r}. Expected one of {', '.join(_FORMATS)}.")
    config = _load_config(config_file)
    workers = config.workers if workers is None else workers
    ps = config.ps if ps is None else ps
    launch.check_layout(name=name, workers=workers, ps=ps, port=port)
    if output_format in ("k8s", "vertex") and image is None:
        raise ValueError(f"--image is required for --format {output_format}: the container image holding shardflow.")
    if output_format == "tf-config":
        _print_json(launch.tf_configs(name=name, workers=workers, ps=ps, port=port))
        return
    if output_format == "config":
        output = yaml.safe_dump(launch.container_config(config, workers=workers, ps=ps), sort_keys=False)
    elif output_format == "vertex":
        assert image is not None
        pools = launch.vertex_worker_pools(image=image, workers=workers, ps=ps, machine_type=machine_type,
                                           config_path=config_path)
        output = json.dumps({"workerPoolSpecs": pools}, indent=2) + "\n"
    else:
        assert image is not None
        output = launch.kubernetes_yaml(launch.kubernetes_manifests(
            config, image=image, workers=workers, ps=ps, name=name, port=port, namespace=namespace, secret=secret,
            backoff_limit=backoff_limit))
    for warning in launch.deployment_warnings(config, secret=secret if output_format == "k8s" else None):
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)
    print(output, end="")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
