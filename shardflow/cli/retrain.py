"""``shardflow retrain``: bring the model up to date on new partitions; promote it when it is as good."""

from __future__ import annotations


def retrain_command() -> None:
    """Retrain on new partitions (not yet written)."""
    raise NotImplementedError
