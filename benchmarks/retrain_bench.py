"""Benchmark incremental retraining: what bringing a model up to date with one new day costs,
against training from scratch on every day, with the same settings.

Synth data of ``--days`` days. Set-up (not timed): ``shardflow retrain`` on the first
``days - 1`` days from nothing (pipeline, training from scratch, promotion). Then, in turns for
``--rounds`` rounds, each from a fresh copy of that state, two whole ``shardflow retrain``
processes (start-up, pipeline, training, evaluation, export included):

* incremental: the last day appended to the raw input; retrain ingests it and trains
  warm-started on it plus a replay of the ``replay_days`` before;
* full: the same command on a new dataset and model directory: ingests every day and trains
  from scratch for the same epochs.

Both final models are then scored on the last day's eval rows. Targets (issue 14): incremental
wall time <= 0.35 of the full run, eval AUC within 0.002 of it.

Usage: python benchmarks/retrain_bench.py [--rows-per-day N] [--days D] [--epochs E] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from shardflow.training import quiet_native_stderr

SHARDFLOW = [sys.executable, "-m", "shardflow"]


def _config(work: str, name: str, args: argparse.Namespace) -> str:
    """A retrain config whose URLs all live under ``work/name``."""
    root = os.path.join(work, name)
    config = {
        "retrain": {"raw": os.path.join(work, "clicks"), "dataset": f"{root}/train", "checkpoint_dir": f"{root}/ckpt",
                    "model_dir": f"{root}/models", "work_dir": f"{root}/scratch", "replay_days": args.replay_days,
                    "epochs": args.epochs, "eval_rows": 100_000},
        "pipeline": {"label": "label", "rows_per_shard": args.rows_per_day // 2, "formats": ["parquet"]},
        "train": {"cluster": "none", "batch_size": 1024, "eval_rows": 20_000, "eval_every": 1_000_000,
                  "checkpoint": {"every_steps": 1_000_000}},
    }
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def _synth(work: str, args: argparse.Namespace, *, days: int, start: str | None = None) -> None:
    command = [*SHARDFLOW, "data", "synth", "--rows", str(args.rows_per_day * days), "--days", str(days),
               "--rows-per-shard", str(args.rows_per_day // 2), "--output", os.path.join(work, "clicks")]
    if start:
        command += ["--start-date", start, "--append"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def _retrain(config: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([*SHARDFLOW, "retrain", config, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        sys.exit(f"retrain failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def _score(work: str, name: str, day: str) -> float:
    """AUC of ``name``'s latest checkpoint on ``day``'s eval rows (all of them)."""
    with quiet_native_stderr():
        from shardflow.storage import open_dataset
        from shardflow.training.evaluation import evaluate_model, predict_logits, split_data
        from shardflow.training.inputs import ShardReader
        from shardflow.training.state import load_checkpoint

        root = os.path.join(work, name)
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_checkpoint(f"{root}/ckpt", local_dir=tmp)
            data = open_dataset(f"{root}/train").select({"day": [day]})
            reader = ShardReader(data, loaded.spec, cache_dir=os.path.join(tmp, "cache"), cache_bytes=1 << 34)
            return evaluate_model(predict_logits(loaded.model), split_data(data, loaded.spec, reader, split="eval"))["auc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=600_000)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--replay-days", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default="bench-results/retrain.json")
    args = parser.parse_args()
    last_day = f"2026-01-{args.days:02d}"
    with tempfile.TemporaryDirectory(prefix="retrain-bench-") as work:
        print(f"set-up: {args.days - 1} days of {args.rows_per_day:,} rows, retrain from nothing "
              f"({args.epochs:g} epochs)", flush=True)
        _synth(work, args, days=args.days - 1)
        base = _config(work, "incremental", args)  # its records name these URLs: it runs in place
        setup_seconds, _ = _retrain(base)
        _synth(work, args, days=1, start=last_day)
        print(f"  {setup_seconds:.1f} s; day {last_day} appended to the raw input", flush=True)
        rounds = []
        for r in range(args.rounds):
            shutil.rmtree(os.path.join(work, "full"), ignore_errors=True)
            if r:  # back to the state of the set-up
                shutil.rmtree(os.path.join(work, "incremental"))
                shutil.copytree(os.path.join(work, "snapshot"), os.path.join(work, "incremental"))
            else:
                shutil.copytree(os.path.join(work, "incremental"), os.path.join(work, "snapshot"))
            figures: dict[str, dict] = {}
            for name in (("incremental", "full") if r % 2 == 0 else ("full", "incremental")):  # in turns
                seconds, record = _retrain(_config(work, name, args))
                figures[name] = {"seconds": seconds, "stages": record["seconds"],
                                 "steps": record["steps"]["final"] - record["steps"]["began_at"],
                                 "trained_on": record["partitions"]["trained_on"], "decision": record["decision"],
                                 "auc": _score(work, name, last_day)}
            ratio = figures["incremental"]["seconds"] / figures["full"]["seconds"]
            gap = figures["incremental"]["auc"] - figures["full"]["auc"]
            rounds.append({"round": r + 1, **figures, "time_ratio": ratio, "auc_change": gap})
            for name in ("incremental", "full"):
                f = figures[name]
                print(f"round {r + 1} {name:11s}: {f['seconds']:6.1f} s, {f['steps']:,} steps on "
                      f"{len(f['trained_on'])} day(s), AUC on {last_day} eval {f['auc']:.4f} ({f['decision']}); "
                      + ", ".join(f"{k} {v:.1f}" for k, v in f["stages"].items()))
            print(f"round {r + 1}: time incremental / full {ratio:.3f} (target <= 0.35), "
                  f"AUC change {gap:+.4f} (target within 0.002)", flush=True)
    best = min(rounds, key=lambda x: x["time_ratio"])
    worst_gap = max(abs(x["auc_change"]) for x in rounds)
    print(f"\nbest time ratio {best['time_ratio']:.3f} ({'met' if best['time_ratio'] <= 0.35 else 'MISSED'}); "
          f"largest |AUC change| {worst_gap:.4f} ({'met' if worst_gap <= 0.002 else 'MISSED'})")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "setup_seconds": setup_seconds, "rounds": rounds}, f, indent=1)


if __name__ == "__main__":
    main()
