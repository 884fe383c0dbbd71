"""Benchmark `shardflow pipeline run` against the engines' own IO and hand-written writers; peak RSS.

Four parts, every comparison run in turns, round by round (this machine's speed drifts by a third
between runs), each round printed, the best of each job counting:
  1. peers, whole processes (start-up included): `shardflow pipeline run --engine beam|dask
     --shards 16 --split train=0.8,eval=0.2 --split-key C1 --formats parquet` against what a user
     would write in Beam or Dask (benchmarks/pipeline_peers.py, the same split key), on
     --peer-rows rows as 4 Parquet files;
  2. throughput in this process (imports done beforehand), on --rows rows as 8 Parquet files:
     * baseline: read the input with pyarrow and write it with one ``ParquetWriter`` with
       shardflow's settings (no string statistics); Arrow decodes with its threads; the same split
       over 2 processes (a started pool): the most 2 cores give for the bare read and write;
       every side allocates from Arrow's jemalloc pool, as shardflow's local runs do;
     * Beam (DirectRunner: the default, one thread per core; one thread in memory; 2 worker
       processes) and Dask (LocalCluster: the default, 2 worker threads; 2 worker processes)
       writing Parquet, and TFRecord (once each), against ``tf.io.TFRecordWriter`` writing one
       ``tf.train.Example`` per row (its rate measured on --tf-rows rows: it is per row and slow);
  3. fixed cost: `shardflow pipeline run` on a 1,000-row input, per engine, from starting the
     command to its commit (the manifest's modification time);
  4. peak RSS (VmHWM) of a fresh process running the Beam and the Dask pipeline at --rss-rows and
     at 10 times as many.

Usage: python benchmarks/pipeline_bench.py [--rows N] [--peer-rows N] [--rounds R] [--parts peers,fixed,...]
                                          [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from shardflow.children import exit_with_parent, parent_env
from shardflow.pipelines.config import load_config
from shardflow.pipelines.engines import use_jemalloc
from shardflow.pipelines.run import run_pipeline
from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import open_dataset
from shardflow.storage.parquet import statistics_columns

from pipeline_peers import KEY as PEER_KEY  # beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
SHARDFLOW = os.path.join(os.path.dirname(sys.executable), "shardflow")
# Split by the peers' key: a whole-row hash costs pandas more than its IO
PEER_FLAGS = ["--shards", "16", "--split", "train=0.8,eval=0.2", "--split-key", PEER_KEY, "--formats", "parquet",
              "--label", "label"]

_RSS_CHILD = """
import re, sys
from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
run_pipeline(load_config(None, {"input": sys.argv[1], "output": sys.argv[2], "label": "label", "engine": sys.argv[3],
                                "rows_per_shard": int(sys.argv[4])}))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""

ENGINES = {  # name -> settings
    "beam": {"engine": "beam"},  # DirectRunner's default here: one thread per core
    "beam-1thread": {"engine": "beam", "direct_running_mode": "in_memory", "direct_num_workers": 1},
    "beam-2proc": {"engine": "beam", "direct_running_mode": "multi_processing", "direct_num_workers": 2},
    "dask": {"engine": "dask", "dask_workers": 2},  # the default: LocalCluster, 2 worker threads
    "dask-2proc": {"engine": "dask", "dask_workers": 2, "dask_processes": True},
}


def pool_worker() -> None:
    """A baseline's worker process: the bench's allocator, and an end with the bench."""
    exit_with_parent()
    use_jemalloc()


def fresh(path: str) -> str:
    """``path``, emptied: a job's earlier output would only fill the disk and the page cache."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_process(args: list[str]) -> float:
    """Wall seconds of a whole process, start-up included; its output shown only if it fails."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return seconds


def in_turns(jobs: dict[str, Callable[[int], float]], rounds: int, what: str) -> dict[str, list[float]]:
    """Run every job once per round, in turns, printing each round; seconds by job."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(rounds):
        for name, job in jobs.items():
            seconds[name].append(job(r))
        print(f"  {what} round {r + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    return seconds


def baseline_parquet(dataset_url: str, out: str, part: int = 0, parts: int = 1) -> None:
    dataset = open_dataset(dataset_url)
    writer = None
    for shard in dataset.manifest.shards[part::parts]:
        for batch in pq.ParquetFile(dataset.shard_path(shard)).iter_batches(batch_size=65536):
            writer = writer or pq.ParquetWriter(out, batch.schema, compression="snappy",  # shardflow's settings
                                                write_statistics=statistics_columns(batch.schema))
            writer.write_batch(batch)
    writer.close()


def baseline_tfrecord(dataset_url: str, out: str, rows: int) -> int:
    """One ``tf.train.Example`` per row of the first ``rows`` rows; returns the rows written."""
    import tensorflow as tf

    dataset = open_dataset(dataset_url)
    feature = tf.train.Feature
    written = 0
    with tf.io.TFRecordWriter(out) as writer:
        for shard in dataset.manifest.shards:
            for row in pq.read_table(dataset.shard_path(shard)).slice(0, rows - written).to_pylist():
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
                written += 1
            if written >= rows:
                break
    return written


def baseline_parquet_2proc(pool: concurrent.futures.Executor, dataset_url: str, tmp: str) -> None:
    futures = [pool.submit(baseline_parquet, dataset_url, os.path.join(tmp, f"b{i}.parquet"), i, 2) for i in range(2)]
    for future in futures:
        future.result()


def run_engine(engine: str, fmt: str, source: str, out: str, per_shard: int) -> float:
    config = load_config(None, {"input": source, "output": out, "label": "label", "formats": [fmt],
                                "rows_per_shard": per_shard, **ENGINES[engine]})
    return timed(lambda: run_pipeline(config))


def bench_peers(tmp: str, rows: int, rounds: int, results: dict[str, Any]) -> None:
    source = os.path.join(tmp, "peer-input")
    synthesize(source, SynthConfig(rows=rows, days=4, rows_per_shard=-(-rows // 4)))
    jobs: dict[str, Callable[[int], float]] = {}
    for engine in ("beam", "dask"):
        jobs[f"shardflow-{engine}"] = lambda r, e=engine: run_process(
            [SHARDFLOW, "pipeline", "run", "--engine", e, "--input", source,
             "--output", fresh(os.path.join(tmp, f"peer-shardflow-{e}")), *PEER_FLAGS])
        jobs[f"{engine}-peer"] = lambda r, e=engine: run_process(
            [sys.executable, os.path.join(HERE, "pipeline_peers.py"), e, source, fresh(os.path.join(tmp, f"peer-{e}"))])
    for name, seconds in in_turns(jobs, rounds, f"peers ({rows:,} rows, whole processes)").items():
        results[f"{name}_seconds"] = min(seconds)
        results[f"{name}_runs"] = seconds
    for engine in ("beam", "dask"):
        results[f"shardflow_over_{engine}_peer"] = results[f"{engine}-peer_seconds"] / results[f"shardflow-{engine}_seconds"]


def bench_throughput(tmp: str, n: int, tf_rows: int, rounds: int, results: dict[str, Any]) -> None:
    import apache_beam  # noqa: F401  imported before timing: start-up is not throughput
    import distributed  # noqa: F401
    import tensorflow  # noqa: F401

    per_shard = -(-n // 8)
    raw = os.path.join(tmp, "raw")
    synthesize(raw, SynthConfig(rows=n, days=8, rows_per_shard=per_shard))
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn, initializer=pool_worker) as pool:
        with parent_env():  # the workers end with this process, even when it is killed
            list(pool.map(open_dataset, [raw, raw]))  # started and warm
        jobs: dict[str, Callable[[int], float]] = {
            "baseline_parquet": lambda r: timed(lambda: baseline_parquet(raw, os.path.join(tmp, "b.parquet"))),
            "baseline_parquet_2proc": lambda r: timed(lambda: baseline_parquet_2proc(pool, raw, tmp))}
        for engine in ENGINES:
            jobs[f"{engine}_parquet"] = lambda r, e=engine: run_engine(
                e, "parquet", raw, fresh(os.path.join(tmp, f"{e}-parquet")), per_shard)
        runs = {name: [n / s for s in seconds]
                for name, seconds in in_turns(jobs, rounds, f"Parquet ({n:,} rows)").items()}
    start = time.perf_counter()
    tf_written = baseline_tfrecord(raw, os.path.join(tmp, "b.tfrecord"), tf_rows)
    runs["baseline_tfrecord"] = [tf_written / (time.perf_counter() - start)]
    for engine in ENGINES:  # far ahead of the per-row baseline: one run each
        runs[f"{engine}_tfrecord"] = [n / run_engine(engine, "tfrecord", raw, fresh(os.path.join(tmp, f"{engine}-tfrecord")),
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
        results[f"{engine}_parquet_over_2proc"] = (results[f"{engine}_parquet_rows_per_s"]
                                                   / results["baseline_parquet_2proc_rows_per_s"])


def seconds_to_commit(args: list[str], output: str) -> float:
    """Seconds from starting the command to its dataset commit: the manifest's modification
    time (the process's exit comes after)."""
    start = time.time()
    run_process(args)
    return os.stat(os.path.join(output, "manifest.json")).st_mtime - start


def bench_fixed_cost(tmp: str, rounds: int, results: dict[str, Any]) -> None:
    tiny = os.path.join(tmp, "tiny")
    synthesize(tiny, SynthConfig(rows=1000, days=1, rows_per_shard=1000))

    def job(engine: str) -> Callable[[int], float]:
        output = os.path.join(tmp, f"tiny-{engine}")
        return lambda r: seconds_to_commit([SHARDFLOW, "pipeline", "run", "--engine", engine, "--input", tiny,
                                            "--output", fresh(output), "--label", "label"], output)

    jobs = {engine: job(engine) for engine in ("beam", "dask")}
    for engine, seconds in in_turns(jobs, rounds, "fixed cost (1,000 rows, command start to commit)").items():
        results[f"{engine}_fixed_seconds"] = min(seconds)
        results[f"{engine}_fixed_runs"] = seconds


def bench_rss(tmp: str, n: int, results: dict[str, Any]) -> None:
    per_shard = max(n // 8, 1000)
    for label, rows in (("n", n), ("10n", 10 * n)):
        source = os.path.join(tmp, f"rss-input-{label}")
        synthesize(source, SynthConfig(rows=rows, days=rows // per_shard, rows_per_shard=per_shard))
        for engine in ("beam", "dask"):
            out = subprocess.run([sys.executable, "-c", _RSS_CHILD, source, os.path.join(tmp, f"rss-{engine}-{label}"),
                                  engine, str(per_shard)], capture_output=True, text=True, check=True)
            results[f"{engine}_peak_rss_mib_{label}"] = int(out.stdout.split()[-1]) / 1024
    for engine in ("beam", "dask"):
        results[f"{engine}_rss_10n_over_n"] = results[f"{engine}_peak_rss_mib_10n"] / results[f"{engine}_peak_rss_mib_n"]


def report(results: dict[str, Any]) -> None:
    print(f"\npipeline benchmark, {os.cpu_count()} cores; best of {results['rounds']} rounds in turns")
    if "shardflow-beam_seconds" in results:
        print(f"  peers, {results['peer_rows']:,} rows, whole processes:")
        for engine in ("beam", "dask"):
            print(f"    shardflow {engine} {results[f'shardflow-{engine}_seconds']:.2f} s, {engine} peer "
                  f"{results[f'{engine}-peer_seconds']:.2f} s: shardflow's speed / the peer's "
                  f"{results[f'shardflow_over_{engine}_peer']:.2f}")
    if "baseline_parquet_rows_per_s" in results:
        print(f"  throughput, {results['rows']:,} rows:")
        print(f"    {'':28s}{'rows/s':>12s}{'x baseline':>12s}{'x 2 procs':>12s}")
        two = results["baseline_parquet_2proc_rows_per_s"]
        for fmt in ("parquet", "tfrecord"):
            print(f"    {'baseline ' + fmt:28s}{results[f'baseline_{fmt}_rows_per_s']:>12,.0f}{1:>12.2f}")
            if fmt == "parquet":
                print(f"    {'baseline parquet, 2 procs':28s}{two:>12,.0f}"
                      f"{results['baseline_parquet_2proc_over_baseline']:>12.2f}{1:>12.2f}")
            for engine in ENGINES:
                rate = results[f"{engine}_{fmt}_rows_per_s"]
                print(f"    {engine + ' ' + fmt:28s}{rate:>12,.0f}{results[f'{engine}_{fmt}_over_baseline']:>12.2f}"
                      + (f"{results[f'{engine}_parquet_over_2proc']:>12.2f}" if fmt == "parquet" else ""))
    if "beam_fixed_seconds" in results:
        print("  fixed cost (1,000 rows, command start to commit): "
              + ", ".join(f"{e} {results[f'{e}_fixed_seconds']:.2f} s" for e in ("beam", "dask")))
    if "beam_rss_10n_over_n" in results:
        for engine in ("beam", "dask"):
            print(f"  peak RSS ({engine}) at {results['rss_rows']:,} rows {results[f'{engine}_peak_rss_mib_n']:.0f} MiB, "
                  f"at 10x {results[f'{engine}_peak_rss_mib_10n']:.0f} MiB: ratio "
                  f"{results[f'{engine}_rss_10n_over_n']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000, help="rows of the throughput runs")
    parser.add_argument("--peer-rows", type=int, default=2_000_000, help="rows of the runs against the peers")
    parser.add_argument("--tf-rows", type=int, default=200_000, help="rows of the per-row TFRecord baseline")
    parser.add_argument("--rss-rows", type=int, default=400_000, help="N of the peak RSS runs (and 10 N)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each job, in turns (best counts)")
    parser.add_argument("--parts", default="peers,fixed,throughput,rss", help="which parts to run (comma-separated)")
    parser.add_argument("--json", default="bench-results/pipeline.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    use_jemalloc()  # the engines' runs in this process switch to it: every side allocates alike
    results: dict[str, Any] = {"rows": args.rows, "peer_rows": args.peer_rows, "rss_rows": args.rss_rows,
                               "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        if "peers" in parts:
            bench_peers(tmp, args.peer_rows, args.rounds, results)
        if "fixed" in parts:
            bench_fixed_cost(tmp, args.rounds, results)
        if "throughput" in parts:
            bench_throughput(tmp, args.rows, args.tf_rows, args.rounds, results)
        if "rss" in parts:
            bench_rss(tmp, args.rss_rows, results)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    report(results)
    print(f"  written to {args.json}")


if __name__ == "__main__":
    main()
