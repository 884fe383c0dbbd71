"""``shardflow cluster``: what it takes to run the same training on a real cluster."""

from __future__ import annotations

import typer

cluster_app = typer.Typer(help="Describe the same training for a real cluster (TF_CONFIG, Kubernetes, Vertex AI).",
                          no_args_is_help=True)
