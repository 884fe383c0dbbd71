"""Dask engine: the stages as tasks on a Dask cluster (by default a local one, its workers threads)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from distributed import Client, LocalCluster, as_completed

from ..stages import MapResult, Plan, group_pieces, map_file, reduce_shard
from . import Progress, ShardRecord, use_jemalloc

__all__ = ["DaskEngine"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _client(plan: Plan) -> Iterator[Client]:
    config = plan.config
    if config.dask_address:
        with Client(config.dask_address) as client:
            yield client
        return
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)
    if quiet:  # a local cluster's start/stop chatter is noise unless asked for
        logging.getLogger("distributed").setLevel(logging.ERROR)
    with LocalCluster(n_workers=config.dask_workers, threads_per_worker=1, processes=config.dask_processes,
                      dashboard_address=None, silence_logs=logging.CRITICAL if quiet else logging.INFO) as cluster, \
            Client(cluster) as client:
        client.run(use_jemalloc)  # on every worker: in this process when they are threads
        yield client


class DaskEngine:
    """One task per input file, then one per shard; results gathered as they finish (errors re-raised)."""

    def run(self, plan: Plan, progress: Progress) -> tuple[list[MapResult], list[ShardRecord]]:
        with _client(plan) as client:
            futures = client.map(map_file, [plan] * len(plan.inputs), range(len(plan.inputs)), pure=False)
            results: list[MapResult] = []
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                progress("file", rows=result.rows_read, bad=result.bad_rows)
            groups = group_pieces(results)
            shard_futures = [client.submit(reduce_shard, plan, split, shard, urls, pure=False)
                             for (split, shard), urls in groups.items()]
            records: list[ShardRecord] = []
            for future in as_completed(shard_futures):
                done = future.result()
                records.extend(done)
                progress("shard", rows=done[0][3]["rows"] if done else 0)
        return results, records
