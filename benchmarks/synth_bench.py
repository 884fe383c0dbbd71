"""Benchmark `shardflow data synth`: rows/s against a bare pyarrow ParquetWriter, and peak RSS at N and 10·N.

The baseline writes the same rows (generated beforehand, so it measures writing alone) with
``pyarrow.parquet.ParquetWriter`` in the same process. Peak RSS is measured in fresh
subprocesses so the runs do not share a high-water mark.

Usage: python benchmarks/synth_bench.py [--rows N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from shardflow.pipelines.synth import CHUNK_ROWS, SCHEMA, PlantedModel, SynthConfig, synthesize
from shardflow.storage.parquet import statistics_columns

# VmHWM is the child's own peak; ru_maxrss would report the parent's peak carried across exec.
_CHILD = """
import re, sys
from shardflow.pipelines.synth import SynthConfig, synthesize
synthesize(sys.argv[1], SynthConfig(rows=int(sys.argv[2])))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def peak_rss_mib(url: str, rows: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, url, str(rows)], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", default="bench-results/synth.json")
    args = parser.parse_args()
    n = args.rows
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says; children inherit it
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize(os.path.join(tmp, "synth"), SynthConfig(rows=n))
        synth_s = time.perf_counter() - start

        model = PlantedModel.from_seed(0)
        batches = [model.batch(np.random.default_rng(i), min(CHUNK_ROWS, n - s))[0]
                   for i, s in enumerate(range(0, n, CHUNK_ROWS))]
        start = time.perf_counter()
        with pq.ParquetWriter(os.path.join(tmp, "baseline.parquet"), SCHEMA, compression="snappy",
                              write_statistics=statistics_columns(SCHEMA)) as writer:  # same settings as synth
            for batch in batches:
                writer.write_batch(batch, row_group_size=128 * 1024)
        baseline_s = time.perf_counter() - start
        del batches

        rss_n = peak_rss_mib(os.path.join(tmp, "rss-n"), n)
        rss_10n = peak_rss_mib(os.path.join(tmp, "rss-10n"), 10 * n)
    result = {
        "rows": n,
        "synth_rows_per_s": n / synth_s,
        "baseline_parquet_write_rows_per_s": n / baseline_s,
        "synth_over_baseline": baseline_s / synth_s,
        "peak_rss_mib_n": rss_n,
        "peak_rss_mib_10n": rss_10n,
        "rss_10n_over_n": rss_10n / rss_n,
        "cpu": os.cpu_count(),
    }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"synth benchmark, {n:,} rows, pinned to one core")
    print(f"  synth (generate + write + checksum + commit) {result['synth_rows_per_s']:>12,.0f} rows/s")
    print(f"  baseline: pyarrow ParquetWriter, write only  {result['baseline_parquet_write_rows_per_s']:>12,.0f} rows/s")
    print(f"  ratio synth / baseline                       {result['synth_over_baseline']:>12.2f}")
    print(f"  target >= 200,000 rows/s on one core: {'met' if result['synth_rows_per_s'] >= 200_000 else 'NOT met'}")
    print(f"  peak RSS at N    {rss_n:8.0f} MiB")
    print(f"  peak RSS at 10N  {rss_10n:8.0f} MiB   ratio {result['rss_10n_over_n']:.2f}")
    print(f"  written to {args.json}")


if __name__ == "__main__":
    main()
