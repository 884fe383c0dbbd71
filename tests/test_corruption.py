"""Corrupt data and corrupt checkpoints, injected for real: bytes flipped or cut off in a shard or
a checkpoint file, on local disk and on the S3 test server; a checkpoint upload killed (SIGKILL)
midway and before its record. Training must name the bad file in one line and never hang;
resuming must skip a corrupt checkpoint for the one before it, and clean up what a killed
upload left."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid

import pytest

from shardflow.storage import ChecksumMismatchError, CheckpointStore, open_dataset, resolve
from shardflow.storage.checkpoints import CORRUPT_DIR
from shardflow.storage.gc import abort_stale_uploads

from .conftest import Location, run_cli
from .helpers import committed_clicks, train_config
from .test_training import _cluster_processes

pytestmark = pytest.mark.usefixtures("process_tag")  # _cluster_processes sees this test's processes only

SMALL_MODEL = {"hash_buckets": 1024, "embedding_dim": 4, "hidden_units": [8], "min_shard_bytes": 4096}


# -- data ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_clicks(tmp_path_factory) -> str:
    """4,000 rows in TFRecord and Parquet: 4 train shards, 1 eval shard of each."""
    return committed_clicks(tmp_path_factory.mktemp("corrupt-data"), rows=4_000, days=1, raw_rows_per_shard=4_000,
                            rows_per_shard=1_000)


def _config(tmp_path, **settings) -> str:
    return train_config(tmp_path, SMALL_MODEL, eval_rows=500, **settings)


def _copy_dataset(source: str, dest: Location) -> str:
    """The committed dataset at ``source`` (local), file for file, at ``dest``."""
    fs, root = resolve(dest.url, dest.storage_options)
    for directory, _, files in os.walk(source):
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), source).replace(os.sep, "/")
            fs.makedirs(f"{root}/{relative}".rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(os.path.join(directory, name), f"{root}/{relative}")
    fs.invalidate_cache()
    return dest.url


def _record_start(data: bytes, offset: int) -> int:
    """Where the TFRecord record holding byte ``offset`` begins (framing: u64 length, u32 crc, data, u32 crc)."""
    start = 0
    while True:
        (length,) = struct.unpack("<Q", data[start:start + 8])
        if offset < start + 16 + length:
            return start
        start += 16 + length


def _damage(url: str, options: dict, fmt: str, fault: str) -> tuple[str, tuple[int, int] | None]:
    """Flip one byte in the middle of the first train shard of format ``fmt``, or cut its second
    half off. Returns the shard's URL and, for a flipped TFRecord, the bytes from the start of
    the record it spoilt to the flipped byte (TensorFlow names where the chunk that failed its
    CRC begins: the record's header, or its data 12 bytes on)."""
    dataset = open_dataset(url, storage_options=options)
    shard = sorted((s for s in dataset.shards("train") if s.format == fmt), key=lambda s: s.path)[0]
    with dataset.fs.open(dataset.shard_path(shard), "rb") as f:
        data = bytearray(f.read())
    middle = len(data) // 2
    if fault == "flip":
        data[middle] ^= 0x40
    else:
        del data[middle:]
    with dataset.fs.open(dataset.shard_path(shard), "wb") as f:
        f.write(bytes(data))
    bad_record = (_record_start(bytes(data), middle), middle) if fmt == "tfrecord" and fault == "flip" else None
    return dataset.shard_url(shard), bad_record


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stderr
    return lines[-1]


def _train_on_damaged(url: str, options: dict, cli_options: list[str], fmt: str, fault: str, tmp_path) -> None:
    shard_url, bad_record = _damage(url, options, fmt, fault)
    proc = run_cli("train", _config(tmp_path), "--data", url, "--format", fmt, "--cluster", "local", "--workers", "1",
                   "--ps", "1", "--steps", "200", *cli_options, check=False, timeout=240)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = _last_line(proc)
    assert last.startswith("error: ") and shard_url in last, proc.stderr[-3000:]
    assert f"run `shardflow data verify {url}`" in last, last
    if bad_record is not None:
        offset = re.search(r"corrupt record at byte (\d+) ", last)
        assert offset and bad_record[0] <= int(offset.group(1)) <= bad_record[1], (bad_record, last)
    if fault == "truncate":
        assert "truncated at byte" in last, last
    assert "grpc" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not _cluster_processes(), "processes left behind"


@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_a_corrupt_local_tfrecord_shard_ends_training_with_one_line_naming_it(small_clicks, tmp_path, fault) -> None:
    """The case from the issue: one byte flipped in a train shard gave a gRPC dump naming no file."""
    data = _copy_dataset(small_clicks, Location("file", str(tmp_path / "clicks"), {}, []))
    _train_on_damaged(data, {}, [], "tfrecord", fault, tmp_path)


@pytest.mark.chaos
@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_a_corrupt_local_parquet_shard_ends_training_with_one_line_naming_it(small_clicks, tmp_path, fault) -> None:
    data = _copy_dataset(small_clicks, Location("file", str(tmp_path / "clicks"), {}, []))
    _train_on_damaged(data, {}, [], "parquet", fault, tmp_path)


@pytest.mark.chaos
@pytest.mark.parametrize("fault", ["flip", "truncate"])
@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_a_corrupt_remote_shard_is_caught_by_the_cache_and_named(small_clicks, s3_server, tmp_path, fmt, fault) -> None:
    url = f"s3://{s3_server.bucket}/corrupt-{uuid.uuid4().hex[:8]}"
    _copy_dataset(small_clicks, Location("s3", url, s3_server.storage_options, s3_server.cli_options))
    _train_on_damaged(url, s3_server.storage_options, s3_server.cli_options, fmt, fault, tmp_path)
    assert not os.path.exists(tmp_path / "run" / "cache" / "tmp") or not os.listdir(tmp_path / "run" / "cache" / "tmp")


# -- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(params=["file", "s3"])
def store_location(request: pytest.FixtureRequest, tmp_path) -> Location:
    """A fresh checkpoint directory on local disk or on the S3 test server (the crash helper
    knows how to cut uploads short on these two)."""
    name = f"ckpt-{uuid.uuid4().hex[:8]}"
    if request.param == "file":
        return Location("file", str(tmp_path / name), {}, [])
    server = request.getfixturevalue("s3_server")
    return Location("s3", f"s3://{server.bucket}/{name}", server.storage_options, server.cli_options)


def _tf_checkpoint(tmp_path, name: str, value: float, pad_bytes: int = 0) -> str:
    """A directory holding a real TensorFlow checkpoint of one variable (plus ``pad_bytes`` of padding)."""
    import tensorflow as tf

    directory = tmp_path / name
    tf.train.Checkpoint(v=tf.Variable([value] * 256)).write(str(directory / "ckpt"))
    if pad_bytes:
        (directory / "padding.bin").write_bytes(os.urandom(pad_bytes))
    return str(directory)


def _restore_into_new(store: CheckpointStore, tmp_path):
    import tensorflow as tf

    from shardflow.training.checkpointing import restore_newest_intact

    variable = tf.Variable([0.0] * 256)
    record = restore_newest_intact(tf.train.Checkpoint(v=variable), store,
                                   local_dir=str(tmp_path / f"restored-{uuid.uuid4().hex[:6]}"))
    return record, float(variable.numpy()[0])


def _damage_file(store: CheckpointStore, step: int, fault: str) -> str:
    """Flip a byte of, or cut in half, the data file of the checkpoint at ``step``; returns its URL."""
    record = store.get(step)
    entry = next(f for f in record.files if f["path"].startswith("ckpt.data-"))
    path = f"{store.root}/{record.directory}/{entry['path']}"
    data = bytearray(store.fs.cat_file(path))
    if fault == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) // 2:]
    store.fs.pipe_file(path, bytes(data))
    store.fs.invalidate_cache()
    return f"{store.url}/{record.directory}/{entry['path']}"


@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_a_corrupt_latest_checkpoint_is_skipped_for_the_one_before(store_location, tmp_path, caplog, fault) -> None:
    store = CheckpointStore(store_location.url, storage_options=store_location.storage_options)
    for step, value in ((10, 1.0), (20, 2.0)):
        store.publish(_tf_checkpoint(tmp_path, f"s{step}", value), step)
    bad_file = _damage_file(store, 20, fault)
    with caplog.at_level(logging.WARNING, logger="shardflow.training"):
        record, value = _restore_into_new(store, tmp_path)
    assert record.step == 10 and value == 1.0  # the variables hold step 10's values
    warning = next(r.getMessage() for r in caplog.records if "step 20" in r.getMessage() and "corrupt" in r.getMessage())
    assert bad_file in warning
    # Set aside: no longer "latest", its record kept for people, its step free to be saved again.
    assert store.steps() == [10]
    fs = store.fs
    fs.invalidate_cache()
    assert [p.rsplit("/", 1)[-1][:14] for p in fs.ls(f"{store.root}/{CORRUPT_DIR}", detail=False)] == ["c000000000020-"]
    store.publish(_tf_checkpoint(tmp_path, "again20", 3.0), 20)
    store.prune(keep_last=5)  # the corrupt checkpoint's files go with the leftovers
    assert list(store.uncommitted()) == [] and store.steps() == [10, 20]
    assert _restore_into_new(store, tmp_path)[1] == 3.0


def test_no_intact_checkpoint_is_a_clear_error_that_changes_nothing(store_location, tmp_path) -> None:
    store = CheckpointStore(store_location.url, storage_options=store_location.storage_options)
    store.publish(_tf_checkpoint(tmp_path, "s10", 1.0), 10)
    store.publish(_tf_checkpoint(tmp_path, "s20", 2.0), 20)
    _damage_file(store, 10, "flip")
    bad_file = _damage_file(store, 20, "truncate")
    with pytest.raises(ChecksumMismatchError, match=r"no intact checkpoint to resume from: those at steps 20, 10 "
                                                     r"are corrupt") as caught:
        _restore_into_new(store, tmp_path)
    assert bad_file in str(caught.value) and "\n" not in str(caught.value)
    assert store.steps() == [10, 20]  # nothing set aside when there is nothing to resume from


def _kill_during_publish(store: CheckpointStore, source: str, step: int, phase: str, tmp_path) -> None:
    """Publish ``source`` as ``step`` in another process, SIGKILLed once it reaches ``phase``."""
    marker = tmp_path / f"marker-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen([sys.executable, "-m", "tests.helpers.checkpoint_crash", store.url,
                              json.dumps(store.storage_options), source, str(step), phase, str(marker)],
                             cwd=os.path.dirname(os.path.dirname(__file__)), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the upload never reached the point to kill it at"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def _multipart_uploads(store: CheckpointStore) -> list[str]:
    return abort_stale_uploads(store.fs, store.root, older_than=0, dry_run=True)


@pytest.mark.parametrize("phase", ["upload", "record"])
def test_a_killed_upload_leaves_latest_alone_and_is_cleaned_up(store_location, tmp_path, phase) -> None:
    store = CheckpointStore(store_location.url, storage_options=store_location.storage_options)
    store.publish(_tf_checkpoint(tmp_path, "s10", 1.0), 10)
    source = _tf_checkpoint(tmp_path, "s20", 2.0, pad_bytes=11 << 20)  # > 2 parts of 5 MiB: a multipart upload on S3
    _kill_during_publish(store, source, 20, phase, tmp_path)
    assert store.steps() == [10] and store.latest().step == 10
    assert list(store.uncommitted()) == [20]  # what the dead upload left (a half-written file, or every file)
    if phase == "upload" and store_location.backend == "s3":
        assert [key.rsplit("/", 1)[-1] for key in _multipart_uploads(store)] == ["padding.bin"]
    record, value = _restore_into_new(store, tmp_path)
    assert record.step == 10 and value == 1.0
    # The resumed writer saves step 20 again; its prune removes the leftovers.
    store.publish(_tf_checkpoint(tmp_path, "again20", 3.0), 20)
    store.prune(keep_last=5)
    assert list(store.uncommitted()) == [] and _multipart_uploads(store) == []
    assert store.steps() == [10, 20] and _restore_into_new(store, tmp_path)[1] == 3.0


def test_training_resumes_past_a_killed_upload_and_a_corrupt_checkpoint(small_clicks, s3_server, tmp_path) -> None:
    """Through `shardflow train` (in one process) with checkpoints on the S3 server: an upload of
    step 30 killed midway is invisible and cleaned up; a corrupt step 20 is skipped, with a
    warning naming its file, for step 10."""
    url = f"s3://{s3_server.bucket}/train-ckpt-{uuid.uuid4().hex[:8]}"
    store = CheckpointStore(url, storage_options=s3_server.storage_options)
    config = _config(tmp_path, checkpoint={"every_steps": 10, "keep": 5}, export=False, eval_split=None)
    args = ["train", config, "--data", small_clicks, "--checkpoint-dir", url, *s3_server.cli_options]
    run_cli(*args, "--steps", "20", timeout=300)
    assert store.steps() == [10, 20]
    _kill_during_publish(store, _tf_checkpoint(tmp_path, "dying", 0.5, pad_bytes=11 << 20), 30, "upload", tmp_path)
    assert store.latest().step == 20 and list(store.uncommitted()) == [30] and _multipart_uploads(store)
    bad_file = _damage_file(store, 20, "flip")

    resumed = run_cli(*args, "--steps", "30", timeout=300)
    assert "resumed from 10" in resumed.stdout, resumed.stdout
    warnings = [line for line in resumed.stderr.splitlines() if "WARNING" in line and "step 20" in line]
    assert warnings and bad_file in warnings[0], resumed.stderr
    assert store.steps() == [10, 20, 30]  # step 20 saved again, from the restored step 10 on
    assert store.get(30).metadata["batches_consumed"] == [30]
    assert list(store.uncommitted()) == [] and _multipart_uploads(store) == []  # the killed upload's leftovers
    assert s3_server.storage_options["secret"] not in resumed.stdout + resumed.stderr
