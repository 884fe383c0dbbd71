"""Benchmark compression: sizes and eval AUC of every export of one checkpoint, against the
float SavedModel of the same checkpoint, on the same eval rows.

Runs ``shardflow checkpoints export``'s own code (``export_checkpoint``) on the latest
committed checkpoint of ``make demo`` (``demo-data/run/checkpoints``, trained on
``demo-data/train``), twice: once unpruned (SavedModel float, int8 and float16 id tables;
TFLite float32, float16, dynamic-range and full int8), once pruned to ``--prune`` with a
``--fine-tune-steps`` fine-tune, compressed to int8. Every figure is computed by loading
each artifact with the plain library (``tf.saved_model.load``, ``tf.lite.Interpreter``) and
scoring it on the eval split; sizes are bytes on disk and gzip (level 6) bytes.

Targets (issue 13): int8-table SavedModel >= 3.5x smaller than the float one, AUC within
0.001; TFLite int8 within 0.002; float16 within 0.0005; 50% pruning + int8 >= 6x smaller
(gzip), within 0.003.

Usage: python benchmarks/export_bench.py [--checkpoints URL] [--prune S] [--fine-tune-steps N]
           [--eval-rows N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from shardflow.training import quiet_native_stderr

with quiet_native_stderr():
    from shardflow.training.export import export_checkpoint
    from shardflow.training.state import load_checkpoint

# (artifact, what it is compared on, limit on |ΔAUC|, minimum ratio or None)
TARGETS = [
    ("saved_model_int8", "ratio", 0.001, 3.5),
    ("tflite/model_int8.tflite", None, 0.002, None),
    ("saved_model_float16", None, 0.0005, None),
    ("tflite/model_float16.tflite", None, 0.0005, None),
    ("pruned/saved_model_int8", "gzip_ratio", 0.003, 6.0),
]


def run(checkpoints: str, dest: str, work: str, **kwargs) -> dict:
    with quiet_native_stderr():
        loaded = load_checkpoint(checkpoints, local_dir=os.path.join(work, "restore"),
                                 with_optimizer=bool(kwargs.get("fine_tune_steps")))
    started = time.perf_counter()
    report = export_checkpoint(loaded, dest, work_dir=work, **kwargs)
    print(f"  exported step {report.step} in {time.perf_counter() - started:.1f} s; "
          f"{report.rows:,} {report.split} rows; float checkpoint AUC {report.checkpoint_auc:.4f}")
    print(f"  {'artifact':36s} {'bytes':>12s} {'x smaller':>9s} {'gzip':>12s} {'x (gzip)':>9s} {'AUC':>7s} "
          f"{'dAUC':>8s} {'max|dp|':>8s}")
    for a in report.artifacts:
        print(f"  {a.name:36s} {a.bytes:12,d} {a.ratio:9.2f} {a.gzip_bytes:12,d} {a.gzip_ratio:9.2f} {a.auc:7.4f} "
              f"{a.auc_change:+8.4f} {a.max_abs_dprob:8.4f}")
    if report.pruning:
        print(f"  pruning: {json.dumps(report.pruning)}")
    return json.loads(report.to_json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="demo-data/run/checkpoints")
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--fine-tune-steps", type=int, default=200)
    parser.add_argument("--eval-rows", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not os.path.isdir(args.checkpoints):
        sys.exit(f"{args.checkpoints}: no checkpoints; run `make demo` first.")
    results = {}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        print("unpruned:")
        results["unpruned"] = run(args.checkpoints, os.path.join(tmp, "plain"), os.path.join(tmp, "w1"),
                                  formats=["saved_model", "tflite"], quantize=["int8", "float16", "dynamic"],
                                  eval_rows=args.eval_rows)
        print(f"pruned to {args.prune:.0%}, {args.fine_tune_steps} fine-tune steps:")
        results["pruned"] = run(args.checkpoints, os.path.join(tmp, "pruned"), os.path.join(tmp, "w2"),
                                formats=["saved_model"], quantize=["int8"], prune=args.prune,
                                fine_tune_steps=args.fine_tune_steps, eval_rows=args.eval_rows)
    artifacts = {a["name"]: a for r in results.values() for a in r["artifacts"]}
    print("targets:")
    for name, measure, limit, minimum in TARGETS:
        a = artifacts[name]
        ok = abs(a["auc_change"]) <= limit and (minimum is None or a[measure] >= minimum)
        size = f", {measure.replace('_', ' ')} {a[measure]:.2f} (>= {minimum})" if minimum else ""
        print(f"  {name:30s} |dAUC| {abs(a['auc_change']):.4f} (<= {limit}){size}: {'met' if ok else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
