"""Bad input through the real ``shardflow`` command: each case fails in one line naming what is
wrong, or commits with the bad rows in the dead-letter dataset (README, "Bad input")."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.storage import open_dataset, read_parquet

from .conftest import run_cli
from .helpers import SHARDFLOW_EXE, error_line

OK_CSV = "id,x,label\n1,0.5,1\n2,1.5,0\n"
TYPED = {"columns": {"id": "int64", "x": "float64", "label": "int64"}}


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


DUPLICATE_PARQUET = _parquet(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([1])],
                                                  names=["id", "x", "x"]))
HUGE_CSV = "id,text,label\n1,a,1\n2," + "x" * (6 << 20) + ",0\n3,b,1\n"  # one 6 MiB value: larger than a CSV block

# (files in the input directory, settings for --config, then either the fragments of the one
# error line or (rows committed, dead-letter reasons))
ERROR, COMMITTED = "error", "committed"
CASES = {
    "wrong type fails the run by default": (
        {"a.csv": "id,x,label\n1,0.5,1\n2,abc,0\n"}, TYPED,
        ERROR, ["1 of 2 rows are bad", "`max_bad_fraction` 0", "column 'x'", "_dead_letter"]),
    "wrong type is a dead letter under max_bad_fraction": (
        {"a.csv": "id,x,label\n1,0.5,1\n2,abc,0\n"}, {**TYPED, "max_bad_fraction": 0.5},
        COMMITTED, (1, ["column 'x': cannot convert 'abc' to double"])),
    "wrong JSON types are dead letters when columns are declared": (
        {"a.jsonl": '{"id": 1, "x": 0.5, "label": 1}\n{"id": "two", "x": [1], "label": 0}\n{"id": 3, "x": 2, "label": 0}\n'},
        {**TYPED, "max_bad_fraction": 0.5}, COMMITTED, (2, ["column 'id': cannot convert 'two' to int64"])),
    "mixed JSON types cannot be inferred": (
        {"a.jsonl": '{"id": 1, "label": 1}\n{"id": "two", "label": 0}\n{"id": 3, "label": 0}\n'}, {},
        ERROR, ["a.jsonl: cannot infer the column types", "declare `columns`"]),
    "ragged CSV row is a dead letter": (
        {"a.csv": OK_CSV + "3,2.5,1,extra\n"}, {**TYPED, "max_bad_fraction": 0.5},
        COMMITTED, (2, ["expected 3 fields, found 4"])),
    "NaN and Inf features are kept": (
        {"a.csv": "id,x,label\n1,nan,1\n2,inf,0\n3,-inf,1\n"}, TYPED, COMMITTED, (3, [])),
    "NaN and Inf labels are dead letters": (
        {"a.csv": "id,x,label\n1,0.5,1\n2,0.5,nan\n3,0.5,inf\n4,1,0\n"},
        {"columns": {**TYPED["columns"], "label": "float32"}, "max_bad_fraction": 0.5},
        COMMITTED, (2, ["column 'label': required value is missing",  # CSV reads "nan" as missing
                        "column 'label': inf is not a finite number"])),
    "empty directory": ({}, {}, ERROR, ["No input files at"]),
    "zero-byte file alone": ({"a.csv": ""}, {}, ERROR, ["a.csv is empty", "Declare `columns`"]),
    "zero-byte file among others holds no rows": ({"a.csv": OK_CSV, "b.csv": ""}, {}, COMMITTED, (2, [])),
    "header only commits an empty dataset": ({"a.csv": "id,x,label\n"}, TYPED, COMMITTED, (0, [])),
    "one huge record": ({"a.csv": HUGE_CSV}, {"split": {"train": 1.0, "eval": 0.0}}, COMMITTED, (3, [])),
    "duplicate column names": ({"a.csv": "id,x,x,label\n1,2,3,1\n"}, {}, ERROR,
                               ["a.csv: duplicate column name(s) ['x']"]),
    "duplicate column names in a later file (a task of the engine)": (
        {"a.csv": OK_CSV, "b.csv": "id,x,x,label\n1,2,3,1\n"}, {}, ERROR, ["b.csv: duplicate column name(s) ['x']"]),
    "duplicate column names in a later file, on Dask": (
        {"a.csv": OK_CSV, "b.csv": "id,x,x,label\n1,2,3,1\n"}, {"engine": "dask"}, ERROR,
        ["b.csv: duplicate column name(s) ['x']"]),
    "duplicate column names in Parquet": (
        {"a.parquet": DUPLICATE_PARQUET}, {}, ERROR, ["a.parquet: duplicate column name(s) ['x']"]),
    "a later file with a column the inferred schema lacks": (
        {"a.csv": OK_CSV, "b.csv": "id,x,label,new\n3,1,1,z\n"}, {}, ERROR,
        ["b.csv has column(s) ['new']", "`columns`"]),
    "columns beyond the declared ones are left out": (
        {"a.csv": "id,x,label,new\n3,1,1,z\n"}, TYPED, COMMITTED, (1, [])),
    "a declared column the input lacks": (
        {"a.csv": OK_CSV}, {"columns": {**TYPED["columns"], "zz": "int64"}}, ERROR,
        ["2 of 2 rows are bad", "missing column(s) ['zz']"]),
    "unknown label column": ({"a.csv": OK_CSV}, {"label": "nope"}, ERROR, ["Invalid value for `label`: 'nope'"]),
    "unknown augmentation column": (
        {"a.csv": OK_CSV}, {"augment": {"copies": 1, "noise_std": 0.1, "noise_columns": ["nope"]}}, ERROR,
        ["Invalid value for `augment.noise_columns`: 'nope'", "Columns are ['id', 'x', 'label']"]),
    "unknown column type": ({"a.csv": OK_CSV}, {"columns": {"id": "integer"}}, ERROR,
                            ["Invalid value for `columns`", "column 'id': unknown type 'integer'"]),
    "unknown setting": ({"a.csv": OK_CSV}, {"columnz": {}}, ERROR, ["Invalid value for `columnz`", "Extra inputs"]),
    "wrong setting type": ({"a.csv": OK_CSV}, {"shards": "many"}, ERROR, ["Invalid value for `shards`: 'many'"]),
}


# `make test` runs these; `make chaos` every case (each is a whole CLI run of a few seconds).
EVERY_TEST_RUN = {"wrong type fails the run by default", "NaN and Inf labels are dead letters", "one huge record",
                  "duplicate column names in a later file (a task of the engine)", "unknown setting",
                  "a later file with a column the inferred schema lacks", "empty directory"}


def _some_in_every_run(cases, fast) -> list:
    return [pytest.param(c, marks=() if c in fast else pytest.mark.chaos) for c in cases]


@pytest.mark.parametrize("case", _some_in_every_run(CASES, EVERY_TEST_RUN))
def test_pipeline_bad_input(case: str, tmp_path) -> None:
    files, settings, outcome, expected = CASES[case]
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for name, content in files.items():
        (raw / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"input": str(raw), "output": str(out), "label": "label", **settings}))
    proc = run_cli("pipeline", "run", str(config), check=False, timeout=120)
    if outcome == ERROR:
        error_line(proc, *expected)
        with pytest.raises(FileNotFoundError):
            open_dataset(str(out))  # nothing committed
        return
    assert proc.returncode == 0, proc.stderr
    rows, reasons = expected
    assert open_dataset(str(out)).manifest.rows == rows
    dead = read_parquet(open_dataset(str(out / "_dead_letter"))).to_pylist()
    assert sorted(r["reason"] for r in dead) == sorted(reasons)
    assert all(r["source"].startswith(str(raw)) and r["row"] > 0 and r["raw"] for r in dead)


def test_config_files_that_are_not_settings(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, fragment in (("input: [a\n  b: c", "not valid YAML"), ("- a\n- b\n", "expected a mapping")):
        bad.write_text(text)
        error_line(run_cli("pipeline", "run", str(bad), check=False), f"{bad}: {fragment}")
        error_line(run_cli("train", str(bad), check=False), f"{bad}: {fragment}")
    error_line(run_cli("pipeline", "run", str(tmp_path / "missing.yaml"), check=False), "missing.yaml")


def test_an_empty_dataset_is_no_pipeline_input(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("id,x,label\n")
    run_cli("pipeline", "run", "--input", str(tmp_path / "a.csv"), "--output", str(tmp_path / "empty"))
    error_line(run_cli("pipeline", "run", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"),
                       check=False), "empty version 1 holds no shards")


TF_CONFIGS = {
    "not JSON": ("{not json", "TF_CONFIG is not valid JSON"),
    "not an object": ("[1, 2]", "TF_CONFIG must be a JSON object"),
    "no task": (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), "TF_CONFIG needs a `task`"),
    "index out of range": (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}),
                           "TF_CONFIG.task.index is 3"),
    "index not a number": (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": "0"}}),
                           "TF_CONFIG.task.index is '0'"),
    "bad address": (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}),
                    "TF_CONFIG.cluster.worker[0] is 'localhost'"),
    "unset": ("", "TF_CONFIG is not set"),
}


@pytest.mark.parametrize("case", _some_in_every_run(TF_CONFIGS, {"not JSON", "index out of range", "unset"}))
@pytest.mark.parametrize("command", [["train-server"], ["train", "--tf-config", "--data", "unused"]],
                         ids=["train-server", "train"])
def test_malformed_tf_config(case: str, command: list[str], monkeypatch) -> None:
    text, message = TF_CONFIGS[case]
    monkeypatch.setenv("TF_CONFIG", text)
    error_line(run_cli(*command, check=False, timeout=60), message)


def _run_with_file_size_limit(limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, every file it (and each process it starts) writes limited to ``limit``
    bytes: a full disk without root. SIGXFSZ ignored, so a write past it fails with EFBIG."""
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([SHARDFLOW_EXE, *args], capture_output=True, text=True, timeout=120, preexec_fn=limit_files,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("engine", ["beam", "dask"])
def test_disk_full_fails_in_one_line_and_keeps_the_previous_version(engine: str, tmp_path) -> None:
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    run_cli("data", "synth", "--rows", "3000", "--output", raw)
    run_cli("pipeline", "run", "--input", raw, "--output", out, "--label", "label", "--engine", engine)
    before = open_dataset(out).manifest
    proc = _run_with_file_size_limit(20_000, "pipeline", "run", "--input", raw, "--output", out, "--label", "label",
                                     "--seed", "3", "--engine", engine)
    error_line(proc, f"{out}/_staging/", "File too large")
    assert open_dataset(out).manifest == before  # nothing committed
    assert "ok" in run_cli("data", "verify", out).stdout
    unreferenced = {p.name for p in (tmp_path / "out").glob("part-*")} - {s.path for s in before.shards}
    assert unreferenced == set()  # no partial shard left beside the committed ones


def test_disk_full_during_synth_names_the_path(tmp_path) -> None:
    synth = _run_with_file_size_limit(20_000, "data", "synth", "--rows", "3000", "--output", str(tmp_path / "new"))
    with pytest.raises(FileNotFoundError):
        open_dataset(str(tmp_path / "new"))  # nothing committed
    error_line(synth, str(tmp_path / "new"), "File too large")
