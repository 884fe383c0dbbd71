"""Engines run the same two stages (``pipelines.stages``); they differ only in how work is scheduled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..stages import MapResult, Plan

__all__ = ["Engine", "ShardRecord", "Progress", "get_engine"]

ShardRecord = tuple[str, int, str, dict]  # (split, shard, format, Shard JSON)


class Progress(Protocol):
    def __call__(self, event: str, **counts: int) -> None: ...


class Engine(Protocol):
    """Runs ``map_file`` over every input and ``reduce_shard`` over every shard of a plan."""

    def run(self, plan: Plan, progress: Progress) -> tuple[list[MapResult], list[ShardRecord]]: ...


def get_engine(name: str) -> Callable[[], Engine]:
    if name == "beam":
        from .beam import BeamEngine

        return BeamEngine
    if name == "dask":
        from .dask import DaskEngine

        return DaskEngine
    raise ValueError(f"Invalid value for `engine`: {name!r}. Expected 'beam' or 'dask'.")
