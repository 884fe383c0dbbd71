"""Exports of a trained model: the float SavedModel ``shardflow train`` writes, and the
compressed set ``shardflow checkpoints export`` writes, each scored in one report.

A SavedModel has ordinary (un-sharded) variables and a ``serving_default`` signature over the
raw feature columns, so ``tf.saved_model.load(path)`` works anywhere without shardflow. An
export is finished in a local staging directory and then published whole: renamed into place
on local disk, committed through storage's :class:`CheckpointStore` on object storage.

The report scores every artifact as a user would load it (``tf.saved_model.load``,
``tf.lite.Interpreter``) on the same eval rows, against the float checkpoint restored here.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shardflow.storage import CheckpointStore, Dataset, open_dataset
from shardflow.storage.commit import require_new_dir, staged_dir
from shardflow.storage.urls import is_local, redact_url, resolve

from . import quiet_native_stderr
from ._tf import tf, tf_keras
from .compress import compressed_model, fine_tune, prune_model
from .encoding import encode_rows, encoding_spec
from .evaluation import predict_logits, read_rows, split_data
from .inputs import InputSpec, ShardReader
from .model import is_builtin
from .report import classification_metrics
from .state import LoadedCheckpoint
from .tflite import VARIANTS, TFLiteModel, convert

__all__ = ["FORMATS", "QUANTIZATIONS", "Artifact", "ExportReport", "check_export_arguments", "check_export_request",
           "export_checkpoint", "export_saved_model", "write_saved_model"]

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("int8", "float16", "dynamic")  # dynamic: TFLite only
_PREDICT_BATCH = 8192
_CALIBRATION_ROWS = 4096


def write_saved_model(model: tf_keras.Model, spec: InputSpec, directory: str) -> None:
    """``model`` as a SavedModel at local ``directory``, serving raw feature columns."""
    signature = {n: tf.TensorSpec([None], spec.dtype(n), name=n) for n in spec.features}

    @tf.function(input_signature=[signature])
    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logits = model(features, training=False)
        return {"probability": tf.sigmoid(logits), "logit": logits}

    tf.saved_model.save(model, directory, signatures={"serving_default": serve})


def _publish(write: Callable[[str], None], url: str, *, step: int, local_target: str, replace: bool,
             storage_options: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> str:
    """Run ``write(directory)`` into a staging directory and publish it whole: renamed to
    ``local_target`` on local disk (see :func:`staged_dir` for ``replace``), committed as the
    entry of ``step`` of ``CheckpointStore(url)`` on object storage. Returns where it went."""
    if is_local(resolve(url, storage_options)[0]):
        with staged_dir(local_target, replace=replace) as staged:
            write(staged)
        return local_target
    with tempfile.TemporaryDirectory(prefix="shardflow-export-") as staged:
        write(staged)
        store = CheckpointStore(url, storage_options=storage_options)
        return store.url_of(store.publish(staged, step, metadata=dict(metadata)))


def export_saved_model(plain: tf_keras.Model, spec: InputSpec, url: str, *, step: int,
                       storage_options: Mapping[str, Any] | None = None) -> str:
    """The float SavedModel of ``step`` under ``url`` (what ``shardflow train`` ends with);
    returns where it can be loaded from: ``<url>/<step>`` locally (a re-export replaces it), a
    committed entry of ``CheckpointStore(url)`` on object storage."""
    root = resolve(url, storage_options)[1]
    return _publish(lambda directory: write_saved_model(plain, spec, directory), url, step=step,
                    local_target=os.path.join(root, f"{step:012d}"), replace=True, storage_options=storage_options,
                    metadata={"kind": "saved_model"})


@dataclass
class Artifact:
    """One exported model and how it scores against the float checkpoint on the same rows."""

    name: str
    format: str  # saved_model | tflite
    path: str  # relative to the export directory
    bytes: int = 0
    gzip_bytes: int = 0
    of_float: float = 0.0  # these bytes / the float SavedModel's
    ratio: float = 0.0  # float SavedModel bytes / these bytes: "times smaller"
    gzip_ratio: float = 0.0  # the same, both gzip-compressed
    auc: float = 0.0
    log_loss: float = 0.0
    auc_change: float = 0.0  # against the float checkpoint
    max_abs_dprob: float = 0.0  # largest |probability - the float checkpoint's| on one row


@dataclass
class ExportReport:
    checkpoint: str
    step: int
    dataset: str
    split: str
    rows: int
    checkpoint_auc: float
    checkpoint_log_loss: float
    pruning: dict[str, Any] | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    location: str = ""  # where the export was published (not in its own report.json: unknown then)

    def to_json(self, *, with_location: bool = True) -> str:
        data = asdict(self)
        if not with_location:
            del data["location"]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _sizes(path: str) -> tuple[int, int]:
    """Bytes of a file or directory, and their gzip-compressed size (each file alone, level 6)."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
    raw = packed = 0
    for name in files:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        with open(name, "rb") as f:
            while block := f.read(1 << 20):
                raw += len(block)
                packed += len(compressor.compress(block))
        packed += len(compressor.flush())
    return raw, packed


def _batched(logits_of: Callable[[dict[str, Any]], np.ndarray], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = len(next(iter(columns.values())))
    return np.concatenate([np.asarray(logits_of({k: v[i:i + _PREDICT_BATCH] for k, v in columns.items()}))
                           for i in range(0, rows, _PREDICT_BATCH)]).astype(np.float64)


def _saved_model_logits(path: str) -> Callable[[dict[str, Any]], np.ndarray]:
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda features: serve(**{k: tf.constant(v) for k, v in features.items()})["logit"].numpy()


def _plan(formats: Sequence[str], quantize: Sequence[str], pruned: bool) -> list[tuple[str, str, str]]:
    """(name, format, variant) of every artifact asked for, the float SavedModel first."""
    prefix = "pruned/" if pruned else ""
    plan = [("saved_model", "saved_model", "float32")]
    if pruned and "saved_model" in formats:
        plan.append((f"{prefix}saved_model", "saved_model", "float32"))
    if "saved_model" in formats:
        plan += [(f"{prefix}saved_model_{q}", "saved_model", q) for q in quantize if q in ("int8", "float16")]
    if "tflite" in formats:
        plan += [(f"{prefix}tflite/model_{v}.tflite", "tflite", v) for v in VARIANTS
                 if v == "float32" or v in quantize]
    return plan


def check_export_arguments(dest: str, *, formats: Sequence[str], quantize: Sequence[str], prune: float | None,
                           fine_tune_steps: int = 0, storage_options: Mapping[str, Any] | None = None) -> None:
    """The arguments checked before anything is fetched or written; errors name the argument."""
    for name, given, allowed in (("--format", formats, FORMATS), ("--quantize", quantize, QUANTIZATIONS)):
        bad = [v for v in given if v not in allowed]
        if bad:
            raise ValueError(f"Invalid value for `{name}`: {bad[0]!r}. Expected some of {', '.join(allowed)}.")
    if not formats:
        raise ValueError("Invalid value for `--format`: nothing to export.")
    if "dynamic" in quantize and "tflite" not in formats:
        raise ValueError("Invalid value for `--quantize`: 'dynamic' is a TFLite quantization; add --format tflite.")
    if prune is not None and not 0.0 < prune < 1.0:
        raise ValueError(f"Invalid value for `--prune`: {prune}. Expected a sparsity between 0 and 1, exclusive.")
    if fine_tune_steps and prune is None:
        raise ValueError("Invalid value for `--fine-tune-steps`: fine-tuning follows pruning; give --prune too.")
    fs, root = resolve(dest, storage_options)
    if is_local(fs):
        require_new_dir(root)


def check_export_request(loaded: LoadedCheckpoint, dest: str, *, formats: Sequence[str], quantize: Sequence[str],
                         prune: float | None, fine_tune_steps: int = 0,
                         storage_options: Mapping[str, Any] | None = None) -> None:
    """:func:`check_export_arguments`, and what needs the restored checkpoint: the model kind,
    a step already exported to object storage."""
    check_export_arguments(dest, formats=formats, quantize=quantize, prune=prune, fine_tune_steps=fine_tune_steps,
                           storage_options=storage_options)
    if (quantize or prune is not None or "tflite" in formats) and not is_builtin(loaded.config.model):
        raise ValueError(f"TFLite, --quantize and --prune need the built-in model; this checkpoint's model is "
                         f"{loaded.config.model.function!r}: export it with --format saved_model alone.")
    if not is_local(resolve(dest, storage_options)[0]) and \
            loaded.record.step in CheckpointStore(dest, storage_options=storage_options).steps():
        raise FileExistsError(f"{redact_url(dest)}: step {loaded.record.step} is already exported there.")


def _scoring_dataset(loaded: LoadedCheckpoint, data: str | Dataset | None,
                     storage_options: Mapping[str, Any] | None) -> Dataset:
    if isinstance(data, Dataset):  # a view the caller chose (retraining: the new partitions)
        return data
    try:
        return open_dataset(data or loaded.record.metadata["dataset"]["url"], storage_options=storage_options)
    except (OSError, ValueError) as e:
        if data:
            raise
        raise ValueError(f"{e} (the dataset the checkpoint was trained on; name another with --data)") from e


def export_checkpoint(loaded: LoadedCheckpoint, dest: str, *, formats: Sequence[str] = ("saved_model",),
                      quantize: Sequence[str] = (), prune: float | None = None, fine_tune_steps: int = 0,
                      data: str | Dataset | None = None, split: str = "eval", eval_rows: int | None = 100_000,
                      storage_options: Mapping[str, Any] | None = None, work_dir: str,
                      progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export the restored checkpoint ``loaded`` to ``dest`` and score every artifact.

    Args:
        data: The dataset (URL, or an opened :class:`Dataset`, e.g. some of its partitions) to score
            on (default: the one the checkpoint was trained on).
        prune: Target sparsity; the artifacts (but the float SavedModel) are then made from the
            checkpoint's model pruned in place.
        fine_tune_steps: Train steps on the train split after pruning, pruned weights held at zero.
        work_dir: Local scratch space (shard cache under ``cache/``, reused if there), removed by the caller.
    """
    check_export_request(loaded, dest, formats=formats, quantize=quantize, prune=prune, fine_tune_steps=fine_tune_steps,
                         storage_options=storage_options)
    say = progress or (lambda message: None)
    dataset = _scoring_dataset(loaded, data, storage_options)
    reader = ShardReader(dataset, loaded.spec, cache_dir=os.path.join(work_dir, "cache"), cache_bytes=64 << 30)
    say(f"reading {eval_rows or 'all'} rows of the {split} split")
    columns, labels = read_rows(split_data(dataset, loaded.spec, reader, split=split, rows=eval_rows))
    model = loaded.model
    reference = _batched(predict_logits(model), columns)
    base = classification_metrics(labels, reference)
    report = ExportReport(checkpoint=redact_url(loaded.url), step=loaded.record.step,
                          dataset=redact_url(dataset.url), split=split, rows=len(labels), checkpoint_auc=base["auc"],
                          checkpoint_log_loss=base["loss"])
    encoding = encoding_spec(loaded.spec, loaded.config.model) if is_builtin(loaded.config.model) else None

    def write(staged: str) -> None:
        for name, fmt, variant in _plan(formats, quantize, pruned=prune is not None):
            if name.startswith("pruned/") and report.pruning is None:
                report.pruning = _prune(loaded, dataset, reader, prune, fine_tune_steps, say)  # type: ignore[arg-type]
            say(f"exporting {name}")
            path = os.path.join(staged, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if fmt == "saved_model":
                with quiet_native_stderr():  # oneDNN's note on float16 without AVX-512
                    chosen = model if variant == "float32" else compressed_model(model, loaded.spec, loaded.config,
                                                                                 variant)
                    write_saved_model(chosen, loaded.spec, path)
                    logits = _batched(_saved_model_logits(path), columns)
            else:
                with open(path, "wb") as f:
                    f.write(convert(model, variant, _calibration(dataset, loaded, reader, encoding)))
                logits = TFLiteModel(path).logits(encode_rows(columns, encoding))
            baseline = report.artifacts[0] if report.artifacts else None  # the float SavedModel comes first
            report.artifacts.append(_score(name, fmt, path, logits, labels, reference, base, baseline))
        if encoding is not None and "tflite" in formats:
            with open(os.path.join(staged, "encoding.json"), "w") as f:
                json.dump(encoding, f, indent=2)
        with open(os.path.join(staged, "report.json"), "w") as f:
            f.write(report.to_json(with_location=False))

    report.location = _publish(write, dest, step=loaded.record.step, local_target=resolve(dest, storage_options)[1],
                               replace=False, storage_options=storage_options, metadata={"kind": "export"})
    return report


def _score(name: str, fmt: str, path: str, logits: np.ndarray, labels: np.ndarray, reference: np.ndarray,
           base: Mapping[str, float], baseline: Artifact | None) -> Artifact:
    """``name``'s sizes and metrics, against ``baseline`` (the float SavedModel; None: this is it)."""
    size, packed = _sizes(path)
    metrics = classification_metrics(labels, logits)
    dprob = np.abs(1.0 / (1.0 + np.exp(-logits)) - 1.0 / (1.0 + np.exp(-reference)))
    float_bytes, float_packed = (baseline.bytes, baseline.gzip_bytes) if baseline else (size, packed)
    return Artifact(name=name, format=fmt, path=name, bytes=size, gzip_bytes=packed, of_float=size / float_bytes,
                    ratio=float_bytes / size, gzip_ratio=float_packed / packed,
                    auc=metrics["auc"], log_loss=metrics["loss"], auc_change=metrics["auc"] - base["auc"],
                    max_abs_dprob=float(dprob.max()))


def _calibration(dataset: Any, loaded: LoadedCheckpoint, reader: ShardReader,
                 encoding: Mapping[str, Any] | None) -> Callable[[], Any]:
    """Representative encoded train rows for full-int8 calibration (read once, on first use)."""
    cached: list[dict[str, np.ndarray]] = []

    def batches() -> Any:
        if not cached:
            columns, labels = read_rows(split_data(dataset, loaded.spec, reader, split=_train_split(dataset),
                                                   rows=_CALIBRATION_ROWS))
            encoded = encode_rows(columns, encoding)  # type: ignore[arg-type]
            size = min(64, len(labels))  # whole batches only: the converter wants one shape
            cached.extend({k: v[i:i + size] for k, v in encoded.items()}
                          for i in range(0, len(labels) - len(labels) % size, size))
        return iter(cached)

    return batches


def _train_split(dataset: Any) -> str:
    """Calibration and fine-tuning read the train split; a dataset without one is named."""
    if "train" not in dataset.manifest.splits():
        raise ValueError(f"{redact_url(dataset.url)} has no train split to calibrate or fine-tune on; it has "
                         f"{sorted(dataset.manifest.splits())} (name another dataset with --data).")
    return "train"


def _prune(loaded: LoadedCheckpoint, dataset: Any, reader: ShardReader, sparsity: float, steps: int,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Prune ``loaded.model`` in place (after the float artifacts are written), fine-tune if asked."""
    say(f"pruning to {sparsity:.0%} sparsity")
    pruned = prune_model(loaded.model, loaded.config, sparsity)
    info: dict[str, Any] = {"target": sparsity, "sparsity": pruned["sparsity"], "fine_tune_steps": steps}
    if steps:
        if loaded.optimizer is None:
            raise ValueError("Fine-tuning needs the checkpoint's optimizer state (load it with_optimizer=True).")
        config = loaded.config
        data = split_data(dataset, loaded.spec, reader, split=_train_split(dataset), batch_size=config.batch_size,
                          shuffle_buffer=config.shuffle_buffer, seed=config.seed + 1, repeat=True)
        say(f"fine-tuning {steps} steps")
        info["fine_tune_loss"] = fine_tune(loaded.model, loaded.optimizer, pruned["masks"], data, steps)
    return info
