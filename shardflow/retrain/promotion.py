"""Promotion: the rule that blesses a candidate, and the records a serving system reads.

``MODEL_DIR/_promotions/pNNNNNNNN.json``, each created exclusively once the export it names is
committed: the newest record is the model serving now (a named pointer moved by one record, as
MLflow and Vertex aliases do), so a half-written export is never promoted.
``MODEL_DIR/_runs/rNNNNNNNN.json`` holds one record per finished retrain, promoted or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shardflow.storage.records import Record, RecordLog
from shardflow.storage.urls import join_url

from .config import PromotionRule

__all__ = ["LOWER_IS_BETTER", "decide", "promotions", "runs", "promoted_step"]

LOWER_IS_BETTER = {"loss"}


def promotions(model_dir: str, storage_options: Mapping[str, Any] | None = None) -> RecordLog:
    return RecordLog(join_url(model_dir, "_promotions"), "p", storage_options=storage_options)


def runs(model_dir: str, storage_options: Mapping[str, Any] | None = None) -> RecordLog:
    return RecordLog(join_url(model_dir, "_runs"), "r", storage_options=storage_options)


def promoted_step(record: Record | None) -> int | None:
    """The checkpoint step a promotion record names."""
    return int(record.data["checkpoint"]["step"]) if record is not None else None


def decide(rule: PromotionRule, candidate: float, promoted: float | None, *,
           baseline: str = "promoted") -> tuple[bool, str]:
    """Whether ``candidate``'s metric passes ``rule`` against the serving model's (``promoted``;
    None: there is none yet), and why, in words; ``baseline`` names what that model is."""
    sign = -1.0 if rule.metric in LOWER_IS_BETTER else 1.0
    if rule.min_value is not None and sign * candidate < sign * rule.min_value:
        bound = "at most" if sign < 0 else "at least"
        return False, f"{rule.metric} {candidate:.4f} misses min_value: {bound} {rule.min_value:g} is required"
    if promoted is None:
        return True, "no model to compare with yet"
    change = sign * (candidate - promoted)  # > 0: better
    if change < -rule.max_regression:
        return False, (f"{rule.metric} {candidate:.4f} is worse than the {baseline} {promoted:.4f} by {-change:.4f}, "
                       f"more than max_regression {rule.max_regression:g}")
    return True, f"{rule.metric} {candidate:.4f} against the {baseline} {promoted:.4f} ({sign * change:+.4f})"
