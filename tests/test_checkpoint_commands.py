"""``shardflow checkpoints``: list, show, download, evaluate and export, on a local directory and
on the S3 test server, against checkpoints a real 2-worker / 2-ps local cluster wrote.

One training run serves the whole module (module-scoped fixture); every test that changes a
checkpoint store works on its own copy (a local copy, or a fresh prefix on the S3 server).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import CheckpointStore, open_dataset, resolve

from .conftest import TEST_SECRET, S3Server, run_cli
from .helpers import error_line

MODEL = {"hash_buckets": 4096, "embedding_dim": 4, "hidden_units": [16], "min_shard_bytes": 4096}
BATCH = 128
EMBEDDING = "embedding/embeddings"  # the shared id table's variable name, as the record's layout names it
UNCOMMITTED = f"ckpt-{99:012d}-{'0' * 16}"  # an upload that died before its record was written


@dataclass(frozen=True)
class Trained:
    data: str  # the committed dataset (local)
    store: str  # the checkpoint directory the cluster wrote (local); tests copy it before changing anything
    root: str  # a module-wide scratch directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """40 steps of a local cluster of 2 workers and 2 ps; checkpoints (and evaluations of the
    whole eval split) at steps 20 and 40, tables sharded across both ps."""
    root = tmp_path_factory.mktemp("ckpt-commands")
    synthesize(str(root / "raw"), SynthConfig(rows=30_000, days=2, rows_per_shard=15_000))
    run_pipeline(load_config(None, {"input": str(root / "raw"), "output": str(root / "clicks"), "label": "label",
                                    "formats": ["parquet", "tfrecord"], "rows_per_shard": 6_000}))
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({"model": MODEL, "batch_size": BATCH, "log_every": 10, "eval_every": 20,
                                      "eval_rows": 100_000, "checkpoint": {"every_steps": 20, "keep": 5},
                                      "run_dir": str(root / "run")}))
    run_cli("train", str(config), "--data", str(root / "clicks"), "--cluster", "local", "--workers", "2", "--ps", "2",
            "--steps", "40", timeout=600)
    store = root / "run" / "checkpoints"
    assert CheckpointStore(str(store)).steps() == [20, 40]
    return Trained(data=str(root / "clicks"), store=str(store), root=str(root))


def _upload(local: str, server: S3Server, name: str) -> str:
    """A copy of the local directory ``local`` under a fresh prefix on the S3 test server."""
    url = f"s3://{server.bucket}/{name}-{uuid.uuid4().hex[:8]}"
    fs, root = resolve(url, server.storage_options)
    for directory, _, files in os.walk(local):
        for f in files:
            relative = os.path.relpath(os.path.join(directory, f), local).replace(os.sep, "/")
            fs.put_file(os.path.join(directory, f), f"{root}/{relative}")
    fs.invalidate_cache()
    return url


@pytest.fixture(scope="module")
def s3_store(trained, s3_server) -> str:
    """The cluster's checkpoints, records and files alike, on the S3 test server (read-only for tests)."""
    return _upload(trained.store, s3_server, "ckpt-commands")


def _copy(trained: Trained, tmp_path, name: str = "store") -> str:
    shutil.copytree(trained.store, tmp_path / name)
    return str(tmp_path / name)


def _record(url: str, step: int | None = None, options=None):
    store = CheckpointStore(url, storage_options=options)
    return store.latest() if step is None else store.get(step)


def _json(proc) -> object:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _corrupt_local(store: str, step: int) -> str:
    """Flip one byte of a data file of the checkpoint at ``step``; returns the file's name."""
    record = _record(store, step)
    name = next(f["path"] for f in record.files if f["path"].startswith("ckpt.data-") and f["bytes"] > 1000)
    path = os.path.join(store, record.directory, name)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    return name


def _raw_rows(data: str, n: int = 300) -> dict[str, list]:
    """The first ``n`` raw rows of the eval split (None for nulls), as a user would read them."""
    dataset = open_dataset(data)
    shard = next(s for s in dataset.shards("eval") if s.format == "parquet")
    return pq.read_table(dataset.shard_path(shard)).slice(0, n).to_pydict()


def _serve(path: str, rows: dict[str, list]) -> dict[str, np.ndarray]:
    """A SavedModel loaded with plain TensorFlow, fed raw columns: strings ("" for null), float32 (NaN for null)."""
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    inputs = {name: tf.constant([np.nan if v is None else v for v in rows[name]], tf.float32)
              if spec.dtype == tf.float32 else tf.constant(["" if v is None else v for v in rows[name]])
              for name, spec in serve.structured_input_signature[1].items()}
    return {k: v.numpy().astype(np.float64) for k, v in serve(**inputs).items()}


def _tflite_logits(path: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" (moving to LiteRT): still the plain library
        warnings.simplefilter("ignore")
        runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
    return np.asarray(runner(**inputs)["logit"], np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _nothing_at(dest: str) -> None:
    """DEST was not created, and no staging directory was left beside it."""
    assert not os.path.exists(dest), os.listdir(dest)
    parent = os.path.dirname(os.path.abspath(dest))
    assert not [n for n in os.listdir(parent) if n.startswith(".tmp-")], os.listdir(parent)


# -- list ----------------------------------------------------------------------------------------


def _plant_uncommitted_local(store: str) -> int:
    source = os.path.join(store, _record(store, 40).directory)
    shutil.copytree(source, os.path.join(store, UNCOMMITTED))
    return _size(source)


def _plant_uncommitted_s3(url: str, server: S3Server) -> int:
    fs, root = resolve(url, server.storage_options)
    record = _record(url, 40, server.storage_options)
    for f in record.files:
        fs.copy(f"{root}/{record.directory}/{f['path']}", f"{root}/{UNCOMMITTED}/{f['path']}")
    fs.invalidate_cache()
    return record.bytes


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_list_shows_committed_and_uncommitted_checkpoints_with_what_the_trainer_knew(
        backend, trained, s3_server, tmp_path) -> None:
    if backend == "file":
        url, options = _copy(trained, tmp_path), []
        planted = _plant_uncommitted_local(url)
    else:
        url, options = _upload(trained.store, s3_server, "list"), s3_server.cli_options
        planted = _plant_uncommitted_s3(url, s3_server)
    proc = run_cli("checkpoints", "list", url, "--json", *options)
    rows = _json(proc)
    assert TEST_SECRET not in proc.stdout + proc.stderr
    assert [(r["step"], r["committed"], r["latest"]) for r in rows] == [(20, True, False), (40, True, True),
                                                                        (99, False, False)]
    version = open_dataset(trained.data).manifest.version
    store_options = s3_server.storage_options if backend == "s3" else None
    for row in rows[:2]:
        record = _record(url, row["step"], store_options)
        assert row["bytes"] == record.bytes and row["created"] == record.created_at
        assert row["promoted"] is False
        assert row["workers"] == 2 and row["ps"] == 2
        assert row["dataset"] == {"url": trained.data, "version": version}
        assert row["examples"] == BATCH * row["step"]  # every batch both workers took, counted once
        assert isinstance(row["train_loss"], float) and 0.0 < row["train_loss"] < 2.0
        # an evaluation of the whole eval split ran at both checkpoint steps
        assert set(row["eval"]) >= {"auc", "loss", "accuracy", "rows"}
        assert 0.5 < row["eval"]["auc"] < 1.0 and row["eval"]["rows"] == _eval_rows(trained.data)
    assert rows[0]["eval"] != rows[1]["eval"]  # each record has its own step's evaluation
    uncommitted = rows[2]
    assert uncommitted["bytes"] == planted and uncommitted["created"] is None and uncommitted["promoted"] is False
    assert all(uncommitted[k] is None for k in ("train_loss", "eval", "examples", "dataset", "workers", "ps"))
    assert uncommitted["url"].endswith(UNCOMMITTED)

    table = run_cli("checkpoints", "list", url, *options).stdout
    lines = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0].isdigit()}
    assert "uncommitted" in lines["99"] and "latest" not in lines["99"]
    assert " latest " in lines["40"] and " committed " in lines["20"] and "latest" not in lines["20"]


def _eval_rows(data: str) -> int:
    dataset = open_dataset(data)
    formats = {s.format for s in dataset.shards("eval")}
    return sum(s.rows for s in dataset.shards("eval") if s.format == sorted(formats)[0])


# -- show ----------------------------------------------------------------------------------------


def _check_show(shown: dict, trained: Trained, step: int) -> None:
    assert shown["step"] == step
    variables = shown["variables"]
    tables = [v for v in variables if v["variable"] == EMBEDDING]
    assert len(tables) == 1, [v["variable"] for v in variables]  # sharded across 2 ps, listed once, whole
    table = tables[0]
    assert table["shape"] == [MODEL["hash_buckets"], MODEL["embedding_dim"]] and table["shards"] == 2
    assert table["group"] == "model weights" and table["dtype"] == "float32"
    assert table["bytes"] == MODEL["hash_buckets"] * MODEL["embedding_dim"] * 4
    slot = [v for v in variables if v["group"] == "optimizer slots" and v["variable"].endswith(EMBEDDING)]
    assert len(slot) == 1 and slot[0]["shape"] == table["shape"] and slot[0]["shards"] == 2
    assert [v["variable"] for v in variables if v["group"] == "input position"] == ["batches_consumed"]
    assert {v["group"] for v in variables} == {"model weights", "optimizer slots", "input position", "other"}
    assert len({v["key"] for v in variables}) == len(variables)
    assert all(v["shards"] == 1 for v in variables if v["shape"] and np.prod(v["shape"]) * 4 <= MODEL["min_shard_bytes"])
    itemsize = {"float32": 4, "int64": 8}
    for v in variables:
        assert v["bytes"] == int(np.prod(v["shape"], dtype=np.int64)) * itemsize[v["dtype"]], v
    assert shown["bytes"] == sum(v["bytes"] for v in variables)
    # the variables are most of the checkpoint's files (the rest: index, state file, object graph)
    record = _record(trained.store, step)
    assert 0.8 * record.bytes < shown["bytes"] < record.bytes


def test_show_lists_each_variable_once_with_its_shards(trained, s3_store, s3_server) -> None:
    _check_show(_json(run_cli("checkpoints", "show", trained.store, "--json")), trained, 40)
    _check_show(_json(run_cli("checkpoints", "show", trained.store, "--step", "20", "--json")), trained, 20)
    proc = run_cli("checkpoints", "show", s3_store, "--json", *s3_server.cli_options)
    _check_show(_json(proc), trained, 40)
    assert TEST_SECRET not in proc.stdout + proc.stderr
    text = run_cli("checkpoints", "show", trained.store).stdout
    assert EMBEDDING in text and "4096×4" in text and "optimizer slots" in text


def test_show_reads_only_the_index_file(trained, s3_server) -> None:
    url = _upload(trained.store, s3_server, "show-index-only")
    record = _record(url, 40, s3_server.storage_options)
    fs, root = resolve(url, s3_server.storage_options)
    gone = [f["path"] for f in record.files if f["path"] != "ckpt.index"]
    assert any(p.startswith("ckpt.data-") for p in gone)
    for path in gone:
        fs.rm_file(f"{root}/{record.directory}/{path}")
    fs.invalidate_cache()
    assert fs.ls(f"{root}/{record.directory}", detail=False) == [f"{root}/{record.directory}/ckpt.index"]
    _check_show(_json(run_cli("checkpoints", "show", url, "--json", *s3_server.cli_options)), trained, 40)
    # while anything that needs the data files does fail
    error_line(run_cli("checkpoints", "download", url, str(os.path.join(trained.root, f"x-{uuid.uuid4().hex}")),
                        *s3_server.cli_options, check=False))


# -- download ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_download_copies_a_checkpoint_that_tensorflow_reads(backend, trained, s3_store, s3_server, tmp_path) -> None:
    import tensorflow as tf

    url, options = (trained.store, []) if backend == "file" else (s3_store, s3_server.cli_options)
    dest = tmp_path / "down"
    proc = run_cli("checkpoints", "download", url, str(dest), "--step", "20", *options)
    assert TEST_SECRET not in proc.stdout + proc.stderr
    record = _record(trained.store, 20)
    assert sorted(os.listdir(dest)) == sorted(f["path"] for f in record.files)
    original = os.path.join(trained.store, record.directory)
    for f in record.files:
        with open(dest / f["path"], "rb") as got, open(os.path.join(original, f["path"]), "rb") as want:
            assert got.read() == want.read(), f["path"]
    reader = tf.train.load_checkpoint(str(dest))
    shown = _json(run_cli("checkpoints", "show", trained.store, "--step", "20", "--json"))
    shapes = reader.get_variable_to_shape_map()
    assert set(shapes) - {"_CHECKPOINTABLE_OBJECT_GRAPH"} == {v["key"] for v in shown["variables"]}
    table = next(v for v in shown["variables"] if v["variable"] == EMBEDDING)
    assert shapes[table["key"]] == table["shape"]
    assert reader.get_tensor("batches_consumed/.ATTRIBUTES/VARIABLE_VALUE").sum() == 20
    # the same weights as the step-20 checkpoint itself, and not those of step 40
    here = tf.train.load_checkpoint(original).get_tensor(table["key"])
    later = tf.train.load_checkpoint(os.path.join(trained.store, _record(trained.store, 40).directory))
    assert np.array_equal(reader.get_tensor(table["key"]), here)
    assert not np.array_equal(reader.get_tensor(table["key"]), later.get_tensor(table["key"]))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


# -- evaluate ------------------------------------------------------------------------------------


def test_evaluate_agrees_with_the_trainers_evaluation_at_that_step(trained, s3_store, s3_server) -> None:
    for url, options, step in ((trained.store, [], 20), (s3_store, s3_server.cli_options, None)):
        args = ["--step", str(step)] if step is not None else []
        result = _json(run_cli("checkpoints", "evaluate", url, "--data", trained.data, *args, "--json", *options))
        recorded = _record(trained.store, step or 40).metadata["eval"]
        assert result["recorded_eval"] == recorded
        assert result["step"] == (step or 40)
        assert result["rows"] == recorded["rows"] == _eval_rows(trained.data)
        assert abs(result["auc"] - recorded["auc"]) < 1e-3, (result, recorded)
        assert abs(result["loss"] - recorded["loss"]) < 1e-3 and abs(result["accuracy"] - recorded["accuracy"]) < 1e-3
    first = _json(run_cli("checkpoints", "evaluate", trained.store, "--data", trained.data, "--rows", "1000", "--json"))
    assert first["rows"] == 1000 and 0.0 < first["auc"] < 1.0


# -- export --------------------------------------------------------------------------------------

ALL_ARTIFACTS = {"saved_model", "saved_model_int8", "saved_model_float16", "tflite/model_float32.tflite",
                 "tflite/model_float16.tflite", "tflite/model_dynamic.tflite", "tflite/model_int8.tflite"}


@pytest.fixture(scope="module")
def full_export(trained) -> tuple[str, dict]:
    dest = os.path.join(trained.root, "export-all")
    proc = run_cli("checkpoints", "export", trained.store, dest, "--format", "saved_model,tflite",
                   "--quantize", "int8,float16,dynamic", "--json", timeout=600)
    return dest, _json(proc)


def test_export_writes_every_artifact_and_each_serves_with_plain_tensorflow(trained, full_export) -> None:
    from shardflow.training.encoding import encode_rows, load_encoding

    dest, report = full_export
    assert sorted(os.listdir(dest)) == ["encoding.json", "report.json", "saved_model", "saved_model_float16",
                                        "saved_model_int8", "tflite"]
    assert sorted(os.listdir(os.path.join(dest, "tflite"))) == sorted(
        f"model_{v}.tflite" for v in ("float32", "float16", "dynamic", "int8"))
    with open(os.path.join(dest, "report.json")) as f:
        written = json.load(f)
    # --json prints the report the export holds (where it went is known only once it is published)
    assert {k: v for k, v in written.items() if k != "location"} == {k: v for k, v in report.items() if k != "location"}
    load_encoding(os.path.join(dest, "encoding.json"))

    rows = _raw_rows(trained.data)
    n = len(rows["label"])
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert set(by_name) == ALL_ARTIFACTS
    served = _serve(os.path.join(dest, "saved_model"), rows)
    assert served["probability"].shape == (n,) and ((served["probability"] > 0) & (served["probability"] < 1)).all()
    assert np.allclose(served["probability"], _sigmoid(served["logit"]), atol=1e-6)
    for name in ("saved_model_int8", "saved_model_float16"):
        p = _serve(os.path.join(dest, name), rows)["probability"]
        assert p.shape == (n,) and ((p > 0) & (p < 1)).all(), name
        # these rows are among those the report scored: no row differs more than its figure says
        assert np.abs(p - served["probability"]).max() <= by_name[name]["max_abs_dprob"] + 1e-5, name
    assert not np.array_equal(_serve(os.path.join(dest, "saved_model_int8"), rows)["probability"],
                              served["probability"])  # the int8 tables are not the float ones
    encoded = encode_rows(rows, os.path.join(dest, "encoding.json"))
    assert set(encoded) == {"ids", "numeric", "missing"} and len(encoded["ids"]) == n
    for variant in ("float32", "float16", "dynamic", "int8"):
        name = f"tflite/model_{variant}.tflite"
        logits = _tflite_logits(os.path.join(dest, name), encoded)
        p = _sigmoid(logits)
        assert logits.shape == (n,) and ((p > 0) & (p < 1)).all(), name
        assert np.abs(p - served["probability"]).max() <= by_name[name]["max_abs_dprob"] + 1e-5, name
        if variant == "float32":
            assert np.abs(logits - served["logit"]).max() < 1e-3


def test_export_report_figures(trained, full_export) -> None:
    dest, report = full_export
    record = _record(trained.store, 40)
    assert report["step"] == 40 and report["split"] == "eval" and report["dataset"] == trained.data
    assert report["checkpoint"].endswith(record.directory) and report["location"] == dest
    assert report["rows"] == _eval_rows(trained.data) and report["pruning"] is None
    assert abs(report["checkpoint_auc"] - record.metadata["eval"]["auc"]) < 1e-3
    assert abs(report["checkpoint_log_loss"] - record.metadata["eval"]["loss"]) < 1e-3
    artifacts = report["artifacts"]
    assert artifacts[0]["name"] == "saved_model" and artifacts[0]["format"] == "saved_model"
    base = artifacts[0]
    assert base["ratio"] == 1.0 and base["gzip_ratio"] == 1.0
    assert abs(base["auc_change"]) < 1e-6 and base["max_abs_dprob"] < 1e-4
    for a in artifacts:
        assert set(a) == {"name", "format", "path", "bytes", "gzip_bytes", "of_float", "ratio", "gzip_ratio", "auc",
                          "log_loss", "auc_change", "max_abs_dprob"}
        assert a["format"] == ("tflite" if a["name"].startswith("tflite/") else "saved_model")
        assert a["bytes"] == _size(os.path.join(dest, a["path"])) > 0 and a["gzip_bytes"] > 0
        assert a["ratio"] == pytest.approx(base["bytes"] / a["bytes"])
        assert a["of_float"] == pytest.approx(a["bytes"] / base["bytes"])
        assert a["gzip_ratio"] == pytest.approx(base["gzip_bytes"] / a["gzip_bytes"])
        assert 0.5 < a["auc"] < 1.0 and 0.0 < a["log_loss"] < 1.0
        assert a["auc_change"] == pytest.approx(a["auc"] - report["checkpoint_auc"], abs=1e-12)
        assert 0.0 <= a["max_abs_dprob"] < 0.5
    by_name = {a["name"]: a for a in artifacts}
    assert by_name["tflite/model_float32.tflite"]["max_abs_dprob"] < 1e-4
    assert by_name["saved_model_int8"]["bytes"] < base["bytes"]  # the id tables stored as int8
    assert by_name["tflite/model_int8.tflite"]["bytes"] < by_name["tflite/model_float32.tflite"]["bytes"]
    assert by_name["tflite/model_float16.tflite"]["bytes"] < by_name["tflite/model_float32.tflite"]["bytes"]


def _tampered_store(trained: Trained, tmp_path, scale: float) -> str:
    """A store whose only checkpoint is step 40 with its id embedding table scaled by ``scale``,
    written the way the trainer writes one and published with the original record's metadata."""
    import tensorflow as tf

    from shardflow.training.state import PREFIX, load_checkpoint

    loaded = load_checkpoint(trained.store, local_dir=str(tmp_path / "restore"), with_optimizer=True)
    table = loaded.model.get_layer("core").get_layer("embedding").embeddings
    before = table.numpy()
    table.assign(before * scale)
    positions = tf.Variable(loaded.record.metadata["batches_consumed"], dtype=tf.int64, name="batches_consumed")
    files = tmp_path / "tampered-files"
    tf.train.Checkpoint(model=loaded.model, optimizer=loaded.optimizer,
                        batches_consumed=positions).write(str(files / PREFIX))
    (files / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n')
    url = str(tmp_path / "tampered")
    CheckpointStore(url).publish(str(files), 41, metadata=loaded.record.metadata)
    written = tf.train.load_checkpoint(str(files))
    key = "model/layer_with_weights-0/layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
    assert np.allclose(written.get_tensor(key), before * scale)
    original = tf.train.load_checkpoint(os.path.join(trained.store, loaded.record.directory))
    counter = {"save_counter/.ATTRIBUTES/VARIABLE_VALUE"}  # made by a save, not a write
    assert set(written.get_variable_to_shape_map()) - counter == set(original.get_variable_to_shape_map()) - counter
    return url


def test_a_tampered_model_changes_the_report(trained, full_export, tmp_path) -> None:
    _, original = full_export
    url = _tampered_store(trained, tmp_path, scale=100.0)  # the deep tower fed ids 100 times louder
    dest = tmp_path / "export-tampered"
    report = _json(run_cli("checkpoints", "export", url, str(dest), "--json", timeout=600))
    assert report["step"] == 41 and [a["name"] for a in report["artifacts"]] == ["saved_model"]
    assert report["rows"] == original["rows"]
    assert abs(report["checkpoint_auc"] - original["checkpoint_auc"]) > 1e-3, (report, original)
    assert abs(report["artifacts"][0]["auc"] - original["artifacts"][0]["auc"]) > 1e-3
    assert abs(report["checkpoint_log_loss"] - original["checkpoint_log_loss"]) > 1e-4
    # the export serves the tampered weights, not the trained ones
    rows = _raw_rows(trained.data)
    assert np.abs(_serve(str(dest / "saved_model"), rows)["probability"] -
                  _serve(os.path.join(full_export[0], "saved_model"), rows)["probability"]).max() > 1e-3
    # and evaluate scores the tampered weights, beside the record's (copied, untampered) evaluation
    scored = _json(run_cli("checkpoints", "evaluate", url, "--data", trained.data, "--json"))
    assert abs(scored["auc"] - report["checkpoint_auc"]) < 1e-3
    assert abs(scored["auc"] - scored["recorded_eval"]["auc"]) > 1e-3


def test_pruned_export(trained, tmp_path) -> None:
    import tensorflow as tf

    dest = tmp_path / "export-pruned"
    report = _json(run_cli("checkpoints", "export", trained.store, str(dest), "--format", "saved_model,tflite",
                           "--prune", "0.5", "--quantize", "int8", "--json", timeout=600))
    names = [a["name"] for a in report["artifacts"]]
    assert names[0] == "saved_model"
    assert set(names) == {"saved_model", "pruned/saved_model", "pruned/saved_model_int8",
                          "pruned/tflite/model_float32.tflite", "pruned/tflite/model_int8.tflite"}
    for name in names:
        assert os.path.exists(dest / name), name
    assert sorted(os.listdir(dest)) == ["encoding.json", "pruned", "report.json", "saved_model"]
    pruning = report["pruning"]
    assert pruning["target"] == 0.5 and pruning["fine_tune_steps"] == 0
    sparsity = pruning["sparsity"]
    assert any("embedding" in k for k in sparsity) and any("kernel" in k for k in sparsity), sparsity
    assert all(abs(s - 0.5) < 0.05 for s in sparsity.values()), sparsity
    base = report["artifacts"][0]
    assert abs(base["auc_change"]) < 1e-6 and base["max_abs_dprob"] < 1e-4  # the float model is not pruned
    assert report["artifacts"][1]["max_abs_dprob"] > 1e-4  # the pruned one is

    def zeros(path: str, name: str) -> float:
        found = [v for v in tf.saved_model.load(path).variables if name in v.name]
        assert found, name
        return float(np.mean(found[0].numpy() == 0))

    assert zeros(str(dest / "pruned" / "saved_model"), "deep_0/kernel") == pytest.approx(0.5, abs=0.05)
    assert zeros(str(dest / "saved_model"), "deep_0/kernel") < 0.05


# -- bad input -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(trained, tmp_path_factory):
    """Stores for the bad-input cases: empty; with an uncommitted step 99; with a corrupted data file at 40."""
    root = tmp_path_factory.mktemp("broken")
    os.makedirs(root / "empty")
    shutil.copytree(trained.store, root / "uncommitted")
    _plant_uncommitted_local(str(root / "uncommitted"))
    shutil.copytree(trained.store, root / "corrupt")
    corrupted = _corrupt_local(str(root / "corrupt"), 40)
    return root, corrupted


@pytest.mark.parametrize("command", ["list", "show", "download", "evaluate", "export"])
def test_a_url_without_checkpoints_is_refused(command, trained, broken, tmp_path) -> None:
    root, _ = broken
    url = str(root / "empty")
    dest = str(tmp_path / "dest")
    extra = {"download": [dest], "export": [dest], "evaluate": ["--data", trained.data]}.get(command, [])
    proc = run_cli("checkpoints", command, url, *extra, check=False)
    error_line(proc, url, "no checkpoints there" if command == "list" else "no committed checkpoints")
    if dest in extra:  # the commands that write somewhere
        _nothing_at(dest)


def test_an_s3_prefix_without_checkpoints_is_refused(s3_server, tmp_path) -> None:
    url = f"s3://{s3_server.bucket}/nothing-here-{uuid.uuid4().hex[:8]}"
    proc = run_cli("checkpoints", "download", url, str(tmp_path / "dest"), *s3_server.cli_options, check=False)
    error_line(proc, url, "no committed checkpoints")
    assert TEST_SECRET not in proc.stderr
    _nothing_at(str(tmp_path / "dest"))


@pytest.mark.parametrize("command", ["show", "download", "evaluate", "export"])
def test_a_step_that_is_not_there_is_refused(command, trained, tmp_path) -> None:
    dest = str(tmp_path / "dest")
    extra = {"download": [dest], "export": [dest], "evaluate": ["--data", trained.data]}.get(command, [])
    proc = run_cli("checkpoints", command, trained.store, *extra, "--step", "30", check=False)
    error_line(proc, "step 30", "not there", "committed steps: 20, 40")
    if dest in extra:  # the commands that write somewhere
        _nothing_at(dest)


@pytest.mark.parametrize("command", ["show", "download", "export"])
def test_an_uncommitted_step_is_refused(command, broken, tmp_path) -> None:
    root, _ = broken
    dest = str(tmp_path / "dest")
    extra = [dest] if command in ("download", "export") else []
    proc = run_cli("checkpoints", command, str(root / "uncommitted"), *extra, "--step", "99", check=False)
    error_line(proc, "step 99", "uncommitted", "committed steps: 20, 40")
    if dest in extra:  # the commands that write somewhere
        _nothing_at(dest)


@pytest.mark.parametrize("command", ["download", "evaluate", "export"])
def test_a_checkpoint_that_fails_its_checksum_is_refused(command, trained, broken, tmp_path) -> None:
    root, corrupted = broken
    record = _record(str(root / "corrupt"), 40)
    entry = next(f for f in record.files if f["path"] == corrupted)
    dest = str(tmp_path / "dest")
    extra = {"download": [dest], "export": [dest], "evaluate": ["--data", trained.data]}[command]
    proc = run_cli("checkpoints", command, str(root / "corrupt"), *extra, check=False)
    error_line(proc, f"{record.directory}/{corrupted}", "its record says", entry["checksum"])
    if dest in extra:  # the commands that write somewhere
        _nothing_at(dest)
    # the step before is intact and still usable
    if command == "download":
        run_cli("checkpoints", "download", str(root / "corrupt"), dest, "--step", "20")
        assert os.path.exists(os.path.join(dest, "ckpt.index"))


@pytest.mark.parametrize("command", ["download", "export"])
def test_a_checkpoint_that_fails_its_checksum_on_s3_is_refused(command, trained, s3_server, tmp_path) -> None:
    url = _upload(trained.store, s3_server, "corrupt")
    record = _record(url, 40, s3_server.storage_options)
    entry = next(f for f in record.files if f["path"].startswith("ckpt.data-") and f["bytes"] > 1000)
    fs, root = resolve(url, s3_server.storage_options)
    path = f"{root}/{record.directory}/{entry['path']}"
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    fs.invalidate_cache()
    dest = str(tmp_path / "dest")
    proc = run_cli("checkpoints", command, url, dest, *s3_server.cli_options, check=False)
    error_line(proc, f"{record.directory}/{entry['path']}", "its record says", entry["checksum"])
    assert TEST_SECRET not in proc.stderr
    _nothing_at(dest)


@pytest.mark.parametrize("sparsity", ["1.5", "0"])
def test_export_refuses_a_sparsity_outside_0_to_1(sparsity, trained, tmp_path) -> None:
    dest = str(tmp_path / "dest")
    proc = run_cli("checkpoints", "export", trained.store, dest, "--prune", sparsity, check=False)
    error_line(proc, "--prune", f"{float(sparsity)}", "between 0 and 1")
    _nothing_at(dest)


def test_records_written_before_the_trainer_noted_its_state_still_list(trained, tmp_path) -> None:
    store = _copy(trained, tmp_path)
    for path in (tmp_path / "store" / "_checkpoints").iterdir():  # as records were before these fields
        record = json.loads(path.read_text())
        record["metadata"] = {k: record["metadata"][k] for k in ("workers", "batches_consumed", "sharded")}
        path.write_text(json.dumps(record))
    rows = _json(run_cli("checkpoints", "list", store, "--json"))
    assert [(r["step"], r["committed"], r["latest"]) for r in rows] == [(20, True, False), (40, True, True)]
    assert all(r["train_loss"] is None and r["eval"] is None and r["workers"] == 2 for r in rows)
    assert "40" in run_cli("checkpoints", "list", store).stdout
    error_line(run_cli("checkpoints", "evaluate", store, "--data", trained.data, check=False),
                "does not name its model settings")


def test_export_to_object_storage_is_committed_whole(trained, s3_store, s3_server, tmp_path) -> None:
    import tensorflow as tf

    dest = f"s3://{s3_server.bucket}/exports-{uuid.uuid4().hex[:8]}"
    report = _json(run_cli("checkpoints", "export", s3_store, dest, "--json", *s3_server.cli_options))
    exports = CheckpointStore(dest, storage_options=s3_server.storage_options)
    committed = exports.latest()
    assert committed.step == 40 and report["location"].endswith(committed.directory)
    assert {"report.json", "saved_model/saved_model.pb"} <= {f["path"] for f in committed.files}
    local = exports.copy(committed, str(tmp_path / "export"))
    serve = tf.saved_model.load(os.path.join(local, "saved_model")).signatures["serving_default"]
    assert serve is not None
    assert TEST_SECRET not in json.dumps(report)
    error_line(run_cli("checkpoints", "export", s3_store, dest, *s3_server.cli_options, check=False),
                "step 40 is already exported there")


def test_a_dataset_without_the_models_columns_is_refused(trained, tmp_path) -> None:
    import pyarrow as pa

    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"label": [0, 1] * 50, "I1": [1.0] * 100}), tmp_path / "raw" / "part.parquet")
    run_pipeline(load_config(None, {"input": str(tmp_path / "raw"), "output": str(tmp_path / "other"), "label": "label",
                                    "formats": ["parquet"], "split": {"train": 0.5, "eval": 0.5}}))
    for command in (["evaluate", trained.store, "--data", str(tmp_path / "other")],
                    ["export", trained.store, str(tmp_path / "dest"), "--data", str(tmp_path / "other")]):
        error_line(run_cli("checkpoints", *command, check=False), "the model reads column 'C1' as string",
                    "has no such column")
    _nothing_at(str(tmp_path / "dest"))


def test_fine_tuning_after_pruning_trains_with_the_pruned_weights_held_at_zero(trained, tmp_path) -> None:
    import tensorflow as tf

    dest = tmp_path / "tuned"
    report = _json(run_cli("checkpoints", "export", trained.store, str(dest), "--prune", "0.5", "--quantize", "int8",
                           "--fine-tune-steps", "15", "--json", timeout=600))
    assert report["pruning"]["fine_tune_steps"] == 15 and np.isfinite(report["pruning"]["fine_tune_loss"])
    model = tf.saved_model.load(str(dest / "pruned" / "saved_model"))
    table = next(v for v in model.variables if "embedding/embeddings" in v.name).numpy()
    untuned = tf.saved_model.load(str(dest / "saved_model"))
    original = next(v for v in untuned.variables if "embedding/embeddings" in v.name).numpy()
    kept = np.abs(table).sum(axis=1) > 0
    assert kept.mean() == pytest.approx(0.5, abs=0.02)  # the pruned rows stayed zero through training
    assert not np.allclose(table[kept], original[kept])  # and the kept ones trained


def test_the_int8_savedmodel_stores_tables_and_dense_kernels_as_int8(trained, full_export) -> None:
    import tensorflow as tf

    dest, _ = full_export
    variables = {v.name: v for v in tf.saved_model.load(os.path.join(dest, "saved_model_int8")).variables}
    dtypes = {name.split("/")[0]: v.dtype for name, v in variables.items() if name.endswith("values:0")}
    assert dtypes["embedding"] == dtypes["deep_0"] == dtypes["wide_weights"] == tf.int8, dtypes
    assert variables["embedding/scales:0"].dtype == tf.float16
    assert not any(v.dtype == tf.float32 and v.shape.rank == 2 and v.shape[0] == MODEL["hash_buckets"]
                   for v in variables.values())  # no float table left


def test_full_int8_calibrates_on_a_small_train_split(trained, tmp_path) -> None:
    small = tmp_path / "small"
    synthesize(str(tmp_path / "raw"), SynthConfig(rows=300, days=1, rows_per_shard=300))
    run_pipeline(load_config(None, {"input": str(tmp_path / "raw"), "output": str(small), "label": "label",
                                    "formats": ["parquet"], "split": {"train": 0.7, "eval": 0.3}}))
    report = _json(run_cli("checkpoints", "export", trained.store, str(tmp_path / "dest"), "--data", str(small),
                           "--format", "tflite", "--quantize", "int8", "--json", timeout=600))
    assert [a["name"] for a in report["artifacts"]][-1] == "tflite/model_int8.tflite"
    assert report["rows"] == sum(s.rows for s in open_dataset(str(small)).shards("eval"))


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "Invalid value for `--format`: 'onnx'"),
    (["--quantize", "int4"], "Invalid value for `--quantize`: 'int4'"),
    (["--quantize", "dynamic"], "'dynamic' is a TFLite quantization"),
    (["--fine-tune-steps", "5"], "give --prune too"),
], ids=["format", "quantize", "dynamic-without-tflite", "fine-tune-without-prune"])
def test_bad_export_arguments_are_refused_before_anything_is_written(trained, tmp_path, args, message) -> None:
    dest = str(tmp_path / "dest")
    error_line(run_cli("checkpoints", "export", trained.store, dest, *args, check=False), message)
    _nothing_at(dest)


def test_checkpoint_records_carry_no_credentials_from_urls() -> None:
    from types import SimpleNamespace

    from shardflow.training.config import TrainConfig
    from shardflow.training.inputs import InputSpec
    from shardflow.training.trainer import _recorded_settings

    config = TrainConfig(data="s3://AKIAKEY:datasecret@bucket/data", checkpoint_dir="s3://AKIAKEY:ckptsecret@bucket/ck",
                         export_dir="https://host/export?sig=exportsecret", storage_options={"secret": "optsecret"})
    dataset = SimpleNamespace(manifest=SimpleNamespace(version=3))  # only its version is read
    spec = InputSpec(feature_spec={"label": {"dtype": "int64"}}, label="label")
    text = json.dumps(_recorded_settings(config, dataset, spec, workers=1, ps=0, layout={}, sharded={}))
    for secret in ("datasecret", "ckptsecret", "exportsecret", "optsecret"):
        assert secret not in text
    assert "bucket/ck" in text and '"version": 3' in text


def test_a_split_the_dataset_lacks_is_refused(trained, tmp_path) -> None:
    dest = str(tmp_path / "dest")
    for command in (["evaluate", trained.store, "--data", trained.data], ["export", trained.store, dest]):
        error_line(run_cli("checkpoints", *command, "--split", "nope", check=False), "`split`: 'nope'",
                    "['eval', 'train']")
    _nothing_at(dest)
