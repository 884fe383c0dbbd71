"""Benchmark `shardflow pipeline run`: Beam and Dask rows/s against hand-written writers, and peak RSS.

For N rows of synth data (Parquet input), measured in this process:
  * baseline: read the input with pyarrow and write the same rows with one ``ParquetWriter``
    (single-threaded), and with ``tf.io.TFRecordWriter`` (one ``tf.train.Example`` per row);
  * the Parquet baseline again, its input split over 2 processes (a started pool): the most
    that 2 cores give for the bare read and write, an upper bound for any 2-worker engine;
  * Beam (DirectRunner: the default, one thread per core; one thread in memory; 2 worker
    processes) and Dask (LocalCluster: the default, 2 worker threads; 2 worker processes) running
    the pipeline to Parquet, and to TFRecord, end to end (worker and cluster start-up
    included; imports done beforehand);
  * each engine's fixed cost: the same run on a 1,000-row input.
Peak RSS (VmHWM) of a fresh process running the Beam pipeline at N and 10·N rows.

The Parquet runs are repeated ``--rounds`` times in turns and the best of each counts (a
shared machine's speed drifts by a third between runs); the slow per-row TFRecord baseline
and the TFRecord runs once each.

Usage: python benchmarks/pipeline_bench.py [--rows N] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import pyarrow.parquet as pq

from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import open_dataset

_RSS_CHILD = """
import re, sys
from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
run_pipeline(load_config(None, {"input": sys.argv[1], "output": sys.argv[2], "label": "label",
                                "rows_per_shard": int(sys.argv[3])}))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


ENGINES = {  # name -> settings
    "beam": {"engine": "beam"},  # DirectRunner's default here: one thread per core
    "beam-1thread": {"engine": "beam", "direct_running_mode": "in_memory", "direct_num_workers": 1},
    "beam-2proc": {"engine": "beam", "direct_running_mode": "multi_processing", "direct_num_workers": 2},
    "dask": {"engine": "dask", "dask_workers": 2},  # the default: LocalCluster, 2 worker threads
    "dask-2proc": {"engine": "dask", "dask_workers": 2, "dask_processes": True},
}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def baseline_parquet(dataset_url: str, out: str, part: int = 0, parts: int = 1) -> None:
    dataset = open_dataset(dataset_url)
    writer = None
    for shard in dataset.manifest.shards[part::parts]:
        for batch in pq.ParquetFile(dataset.shard_path(shard)).iter_batches(batch_size=65536):
            writer = writer or pq.ParquetWriter(out, batch.schema, compression="snappy")
            writer.write_batch(batch)
    writer.close()


def baseline_tfrecord(dataset_url: str, out: str) -> None:
    import tensorflow as tf

    dataset = open_dataset(dataset_url)
    feature = tf.train.Feature
    with tf.io.TFRecordWriter(out) as writer:
        for shard in dataset.manifest.shards:
            for row in pq.read_table(dataset.shard_path(shard)).to_pylist():
                features = {}
                for key, value in row.items():
                    if value is None:
                        continue
                    if isinstance(value, str):
                        features[key] = feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
                    elif isinstance(value, float):
                        features[key] = feature(float_list=tf.train.FloatList(value=[value]))
                    else:
                        features[key] = feature(int64_list=tf.train.Int64List(value=[value]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def baseline_parquet_2proc(pool: concurrent.futures.Executor, dataset_url: str, tmp: str) -> None:
    futures = [pool.submit(baseline_parquet, dataset_url, os.path.join(tmp, f"b{i}.parquet"), i, 2) for i in range(2)]
    for future in futures:
        future.result()


def run_engine(engine: str, fmt: str, source: str, out: str, per_shard: int) -> float:
    config = load_config(None, {"input": source, "output": out, "label": "label", "formats": [fmt],
                                "rows_per_shard": per_shard, **ENGINES[engine]})
    return timed(lambda: run_pipeline(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each Parquet job, in turns (best counts)")
    parser.add_argument("--json", default="bench-results/pipeline.json")
    args = parser.parse_args()
    import apache_beam  # noqa: F401  imported before timing: start-up is not throughput
    import distributed  # noqa: F401
    import tensorflow  # noqa: F401

    n = args.rows
    per_shard = max(n // 8, 1000)
    results: dict[str, Any] = {"rows": n, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw")
        synthesize(raw, SynthConfig(rows=n, days=8, rows_per_shard=per_shard))
        tiny = os.path.join(tmp, "tiny")
        synthesize(tiny, SynthConfig(rows=1000, days=1, rows_per_shard=1000))
        for engine in ENGINES:
            results[f"{engine}_fixed_seconds"] = run_engine(engine, "parquet", tiny, os.path.join(tmp, f"{engine}-tiny"), 1000)
        # Parquet: every run --rounds times, in turns (this machine's speed drifts), best of each counts.
        runs: dict[str, list[float]] = {}
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as pool:
            list(pool.map(open_dataset, [raw, raw]))  # started and warm
            for r in range(args.rounds):
                runs.setdefault("baseline_parquet", []).append(
                    n / timed(lambda: baseline_parquet(raw, os.path.join(tmp, "b.parquet"))))
                runs.setdefault("baseline_parquet_2proc", []).append(
                    n / timed(lambda: baseline_parquet_2proc(pool, raw, tmp)))
                for engine in ENGINES:
                    runs.setdefault(f"{engine}_parquet", []).append(
                        n / run_engine(engine, "parquet", raw, os.path.join(tmp, f"{engine}-parquet-{r}"), per_shard))
        # TFRecord: the per-row baseline is slow and far behind every engine; one run each.
        runs["baseline_tfrecord"] = [n / timed(lambda: baseline_tfrecord(raw, os.path.join(tmp, "b.tfrecord")))]
        for engine in ENGINES:
            runs[f"{engine}_tfrecord"] = [n / run_engine(engine, "tfrecord", raw, os.path.join(tmp, f"{engine}-tfrecord"),
                                                        per_shard)]
        for name, rates in runs.items():
            results[f"{name}_rows_per_s"] = max(rates)
            results[f"{name}_runs"] = rates
        results["baseline_parquet_2proc_over_baseline"] = (results["baseline_parquet_2proc_rows_per_s"]
                                                           / results["baseline_parquet_rows_per_s"])
        for engine in ENGINES:
            for fmt in ("parquet", "tfrecord"):
                results[f"{engine}_{fmt}_over_baseline"] = (results[f"{engine}_{fmt}_rows_per_s"]
                                                            / results[f"baseline_{fmt}_rows_per_s"])
        big = os.path.join(tmp, "raw10")
        synthesize(big, SynthConfig(rows=10 * n, days=80, rows_per_shard=per_shard))
        for label, source in (("n", raw), ("10n", big)):
            out = subprocess.run([sys.executable, "-c", _RSS_CHILD, source, os.path.join(tmp, f"rss-{label}"),
                                  str(per_shard)], capture_output=True, text=True, check=True)
            results[f"beam_peak_rss_mib_{label}"] = int(out.stdout.split()[-1]) / 1024
        results["rss_10n_over_n"] = results["beam_peak_rss_mib_10n"] / results["beam_peak_rss_mib_n"]
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"pipeline benchmark, {n:,} rows of synth data, {os.cpu_count()} cores; Parquet: best of {args.rounds} runs")
    print(f"  {'':28s}{'rows/s':>12s}{'x baseline':>12s}")
    for fmt in ("parquet", "tfrecord"):
        print(f"  {'baseline ' + fmt:28s}{results[f'baseline_{fmt}_rows_per_s']:>12,.0f}{1:>12.2f}")
        if fmt == "parquet":
            print(f"  {'baseline parquet, 2 procs':28s}{results['baseline_parquet_2proc_rows_per_s']:>12,.0f}"
                  f"{results['baseline_parquet_2proc_over_baseline']:>12.2f}")
        for engine in ENGINES:
            print(f"  {engine + ' ' + fmt:28s}{results[f'{engine}_{fmt}_rows_per_s']:>12,.0f}"
                  f"{results[f'{engine}_{fmt}_over_baseline']:>12.2f}")
    print("  fixed cost (1,000 rows): " + ", ".join(f"{e} {results[f'{e}_fixed_seconds']:.1f} s" for e in ENGINES))
    print(f"  peak RSS (Beam) at N {results['beam_peak_rss_mib_n']:.0f} MiB, at 10N "
          f"{results['beam_peak_rss_mib_10n']:.0f} MiB: ratio {results['rss_10n_over_n']:.2f}")
    print(f"  written to {args.json}")


if __name__ == "__main__":
    main()
