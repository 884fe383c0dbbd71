"""``shardflow schedule``: run the retraining on a cron schedule."""

from __future__ import annotations


def schedule_command() -> None:
    """Run `shardflow retrain CONFIG.yaml` on a cron schedule (not yet written)."""
    raise NotImplementedError
