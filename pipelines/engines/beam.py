"""Beam engine: the stages as a Beam pipeline, on any runner (DirectRunner locally, DataflowRunner ...).

``Create(inputs) | ParDo(map_file) | GroupByKey(shard) | Map(reduce_shard)``: only piece
references pass through the shuffle. Results are written as small JSON files into the
run's staging directory and read back by the launcher, which works on every runner.
"""

from __future__ import annotations

import json
from dataclasses import asdict
import logging
import os
import shlex
import sys
import threading
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from shardflow.children import parent_env
from shardflow.storage import resolve
from shardflow.storage.commit import publish_bytes
from shardflow.storage.urls import join_url, translate_errors

from ..stages import MapResult, Plan, map_file, reduce_shard
from . import Progress, ShardRecord, use_jemalloc

__all__ = ["BeamEngine", "build_pipeline", "beam_options"]

log = logging.getLogger(__name__)


def beam_options(plan: Plan) -> PipelineOptions:
    config = plan.config
    args = [f"--runner={config.runner}", *config.beam_options]
    if config.runner == "DirectRunner":
        workers = config.direct_num_workers or os.cpu_count() or 1
        # multi_processing's workers come from the runner's environment (_local_runner), not this mode
        mode = "in_memory" if config.direct_running_mode == "multi_processing" else config.direct_running_mode
        args += [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    return PipelineOptions(args)


class _OneWorkerWarning(logging.Filter):
    """Drops the FnApiRunner's advice to use multi_processing, which :func:`_local_runner` does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_num_workers is not equal to 1" not in record.getMessage()


logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").addFilter(_OneWorkerWarning())


def _local_runner(plan: Plan) -> beam.runners.PipelineRunner:
    """The FnApiRunner; for ``multi_processing``, with SDK workers that end with this process
    (:mod:`.beam_worker`), where Beam's own would outlive a killed pipeline by up to a minute."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import SubprocessSDKEnvironment

    if plan.config.direct_running_mode != "multi_processing":
        return FnApiRunner()
    command = f"exec {shlex.quote(sys.executable)} -m shardflow.pipelines.engines.beam_worker"
    return FnApiRunner(default_environment=SubprocessSDKEnvironment.from_command_string(command))


def _save(plan: Plan, name: str, payload: bytes) -> None:
    """Leave a result for the launcher, whole or not at all (it polls for them while the job runs)."""
    url = join_url(plan.staging, "results", name)
    fs, path = resolve(url, plan.config.storage_options)
    with translate_errors(url, plan.config.storage_options):
        publish_bytes(fs, path, payload)


class _MapFile(beam.DoFn):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def process(self, index: int) -> Iterator[tuple[tuple[str, int], str]]:
        result = map_file(self.plan, index)
        _save(self.plan, f"map-{index:07d}.json", json.dumps(asdict(result)).encode())
        for split, shard, url in result.pieces:
            yield (split, shard), url


class _ReduceShard(beam.DoFn):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def process(self, element: tuple[tuple[str, int], list[str]]) -> Iterator[None]:
        (split, shard), urls = element
        records = reduce_shard(self.plan, split, shard, list(urls))
        _save(self.plan, f"shard-{split}-{shard:05d}.json", json.dumps(records).encode())
        return iter(())


def build_pipeline(plan: Plan) -> beam.Pipeline:
    """The Beam pipeline for ``plan`` (not run): labelled steps, any runner.

    ``DirectRunner`` means Beam's FnApiRunner here. Beam's own DirectRunner first tries its
    Prism runner, a binary it downloads from GitHub at run time: that reaches the internet,
    fails or differs by machine, and leaves temporary directories behind.
    """
    runner = _local_runner(plan) if plan.config.runner == "DirectRunner" else None  # else the one --runner names
    pipeline = beam.Pipeline(runner=runner, options=beam_options(plan))
    _ = (
        pipeline
        | "ListInputs" >> beam.Create(list(range(len(plan.inputs))))
        | "Reshuffle" >> beam.Reshuffle()
        | "ParseValidateSplitAugment" >> beam.ParDo(_MapFile(plan))
        | "GroupByShard" >> beam.GroupByKey()
        | "ShuffleEncodeWrite" >> beam.ParDo(_ReduceShard(plan))
    )
    return pipeline


class BeamEngine:
    """Runs the pipeline in a background thread and reports progress from the results it leaves."""

    poll_seconds = 0.5

    def run(self, plan: Plan, progress: Progress) -> tuple[list[MapResult], list[ShardRecord]]:
        outcome: dict[str, object] = {}

        if plan.config.runner == "DirectRunner":
            use_jemalloc()  # for the in-process workers; multi_processing's set it themselves (.beam_worker)

        def execute() -> None:
            try:
                with parent_env():  # multi_processing's SDK workers watch this process (.beam_worker)
                    outcome["state"] = build_pipeline(plan).run().wait_until_finish()
            except BaseException as e:  # re-raised in the caller below
                outcome["error"] = e

        if not logging.getLogger().isEnabledFor(logging.INFO):  # worker start-up chatter of multi_processing
            logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
        worker = threading.Thread(target=execute, name="beam-pipeline", daemon=True)
        worker.start()
        seen: dict[str, bytes] = {}
        maps: list[MapResult] = []
        records: list[ShardRecord] = []
        while True:
            finished = not worker.is_alive()
            for name, data in self._new_results(plan, seen):
                if name.startswith("map-"):
                    fields = json.loads(data)
                    fields["pieces"] = [tuple(p) for p in fields["pieces"]]
                    maps.append(MapResult(**fields))
                    progress("file", rows=maps[-1].rows_read, bad=maps[-1].bad_rows)
                else:
                    done = [tuple(r) for r in json.loads(data)]
                    records.extend(done)  # type: ignore[arg-type]
                    progress("shard", rows=done[0][3]["rows"] if done else 0)
            if finished:
                break
            worker.join(self.poll_seconds)
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        if outcome.get("state") != PipelineState.DONE:
            raise RuntimeError(f"The Beam pipeline ended in state {outcome.get('state')}; nothing was committed.")
        return maps, records

    @staticmethod
    def _new_results(plan: Plan, seen: dict[str, bytes]) -> list[tuple[str, bytes]]:
        fs, path = resolve(join_url(plan.staging, "results"), plan.config.storage_options)
        fs.invalidate_cache(path)
        try:
            names = sorted(fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        fresh = []
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base in seen or base.startswith(".") or not base.endswith(".json"):
                continue
            seen[base] = fs.cat_file(name)
            fresh.append((base, seen[base]))
        return fresh
