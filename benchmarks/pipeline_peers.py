"""What a user would write by hand instead of `shardflow pipeline run`: the peers of pipeline_bench.py.

Both read every Parquet file under INPUT, split the rows 80/20 by a hash of one column (pandas'
``hash_pandas_object`` of ``C1``: hashing the whole row, as shardflow does by default, would cost
pandas more than the whole read and write) and write Parquet per split, with each engine's
default Parquet settings:
  * beam: ``ReadAllFromParquetBatched`` → tag each table's rows → ``WriteToParquetBatched`` per split
    (runner-chosen shards; ``num_shards=16`` was killed at 24 GiB RSS on 2M rows), on the same
    FnApiRunner and worker threads that shardflow uses (Beam's own DirectRunner first tries to
    download its Prism runner);
  * dask: ``read_parquet`` → split column → ``repartition(16)`` → ``to_parquet(partition_on="split")``
    on Dask's default (threaded) scheduler.
They do less than shardflow: no row-level shuffle, no checksums, no commit, no bad-row checks.

Usage: python benchmarks/pipeline_peers.py {beam,dask} INPUT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
import pandas as pd


KEY = "C1"


def is_train(frame: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(frame[KEY], index=False).to_numpy() % 10 < 8


def beam_peer(files: list[str], out: str) -> None:
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquetBatched
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    def tag(table: pa.Table):
        train = is_train(table.to_pandas())
        yield beam.pvalue.TaggedOutput("train", table.filter(pa.array(train)))
        yield beam.pvalue.TaggedOutput("eval", table.filter(pa.array(~train)))

    schema = pq.read_schema(files[0])
    options = PipelineOptions(["--direct_running_mode=multi_threading", f"--direct_num_workers={os.cpu_count()}"])
    with beam.Pipeline(runner=FnApiRunner(), options=options) as pipeline:
        parts = (pipeline | beam.Create(files) | ReadAllFromParquetBatched()
                 | beam.ParDo(tag).with_outputs("train", "eval"))
        for split in ("train", "eval"):
            _ = parts[split] | f"Write{split}" >> WriteToParquetBatched(
                os.path.join(out, split, "part"), schema, file_name_suffix=".parquet")


def dask_peer(files: list[str], out: str) -> None:
    import dask.dataframe as dd

    frame = dd.read_parquet(files)
    frame = frame.map_partitions(lambda part: part.assign(split=np.where(is_train(part), "train", "eval")))
    frame.repartition(npartitions=16).to_parquet(out, partition_on=["split"])


if __name__ == "__main__":
    engine, source, target = sys.argv[1:4]
    inputs = sorted(glob.glob(os.path.join(source, "**", "*.parquet"), recursive=True))
    {"beam": beam_peer, "dask": dask_peer}[engine](inputs, target)
