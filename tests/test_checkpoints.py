"""storage.CheckpointStore: a checkpoint is visible only once committed, whole, on every backend."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from shardflow.storage import ChecksumMismatchError, CheckpointStore, resolve

from .conftest import Location


def _files(tmp_path, name: str, size: int = 1000) -> str:
    directory = tmp_path / name
    (directory / "sub").mkdir(parents=True)
    (directory / "ckpt.index").write_bytes(os.urandom(size))
    (directory / "sub" / "ckpt.data-00000-of-00001").write_bytes(os.urandom(size * 3))
    return str(directory)


def test_publish_list_download_and_prune(location: Location, tmp_path) -> None:
    store = CheckpointStore(location.url, storage_options=location.storage_options)
    assert store.latest() is None and store.steps() == []
    sources = {step: _files(tmp_path, f"src{step}") for step in (10, 20, 30)}
    for step, source in sources.items():
        committed = store.publish(source, step, metadata={"workers": 2})
        assert committed.step == step and committed.metadata == {"workers": 2}
    assert store.steps() == [10, 20, 30]
    latest = store.latest()
    assert latest is not None and latest.step == 30 and latest.bytes == 4000
    local = store.download(latest, str(tmp_path / "down"))
    for entry in latest.files:
        with open(os.path.join(local, *entry["path"].split("/")), "rb") as got, \
                open(os.path.join(sources[30], *entry["path"].split("/")), "rb") as want:
            assert got.read() == want.read()
    with pytest.raises(FileExistsError):  # a step is committed once
        store.publish(sources[30], 30)
    removed = store.prune(keep_last=2)
    assert [c.step for c in removed] == [10] and store.steps() == [20, 30]
    fs, root = resolve(location.url, location.storage_options)
    fs.invalidate_cache()
    assert not any(name.rstrip("/").rsplit("/", 1)[-1].startswith("ckpt-000000000010-") for name in fs.ls(root, detail=False))


def test_an_upload_without_its_record_is_invisible_and_pruned(shared_location: Location, tmp_path) -> None:
    store = CheckpointStore(shared_location.url, storage_options=shared_location.storage_options)
    store.publish(_files(tmp_path, "a"), 5)
    fs, root = resolve(shared_location.url, shared_location.storage_options)
    orphan = f"{root}/ckpt-{3:012d}-{'0' * 16}/ckpt.index"  # an upload that died before its commit
    fs.makedirs(orphan.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(orphan, b"partial")
    assert store.steps() == [5] and store.latest().step == 5
    store.publish(_files(tmp_path, "b"), 6)
    store.prune(keep_last=5)
    fs.invalidate_cache()
    assert not fs.exists(orphan)
    assert store.steps() == [5, 6]


def test_keep_one_every_h_hours(tmp_path) -> None:
    store = CheckpointStore(str(tmp_path / "store"))
    for step in range(1, 7):
        store.publish(_files(tmp_path, f"s{step}", 10), step)
    # Back-date the records two hours apart, as if written over ten hours of training.
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for step in range(1, 7):
        path = tmp_path / "store" / "_checkpoints" / f"c{step:012d}.json"
        record = json.loads(path.read_text())
        record["created_at"] = (start + dt.timedelta(hours=2 * (step - 1))).isoformat()
        path.write_text(json.dumps(record))
    store.prune(keep_last=1, keep_every_hours=4)
    assert store.steps() == [1, 3, 5, 6]


def test_download_verifies_checksums(s3_server, tmp_path) -> None:
    url = f"s3://{s3_server.bucket}/ckpt-verify"
    store = CheckpointStore(url, storage_options=s3_server.storage_options)
    committed = store.publish(_files(tmp_path, "src"), 1)
    fs, root = resolve(url, s3_server.storage_options)
    fs.pipe_file(f"{root}/{committed.directory}/ckpt.index", b"tampered")
    with pytest.raises(ChecksumMismatchError, match="ckpt.index"):
        store.download(committed, str(tmp_path / "down"))


def test_malformed_record_names_the_file(tmp_path) -> None:
    store = CheckpointStore(str(tmp_path / "store"))
    store.publish(_files(tmp_path, "src"), 1)
    (tmp_path / "store" / "_checkpoints" / f"c{1:012d}.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"c{1:012d}.json"):
        store.latest()


def test_a_failed_local_write_is_raised_not_lost(tmp_path) -> None:
    """TensorFlow's asynchronous write keeps its error for the next write; the last save of a
    run has no next write, so the writer must raise it itself."""
    import tensorflow as tf

    from shardflow.training.checkpointing import CheckpointWriter

    store = CheckpointStore(str(tmp_path / "store"))
    checkpoint = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]))
    ok = CheckpointWriter(checkpoint, store, local_dir=str(tmp_path / "local"), keep=3)
    ok.save(1)
    ok.close()
    (tmp_path / "a-file").write_text("not a directory")
    broken = CheckpointWriter(checkpoint, store, local_dir=str(tmp_path / "a-file" / "local"), keep=3)
    broken.save(2)
    with pytest.raises(RuntimeError, match=r"step 2 was not committed.*a-file"):
        broken.close()
    assert [c.step for c in store.list()] == [1] and store.latest().step == 1

    # Mid-run, TensorFlow raises the failure at the next save; the save after that publishes itself.
    mended = CheckpointWriter(checkpoint, store, local_dir=str(tmp_path / "a-file" / "local"), keep=3)
    mended.save(3)
    mended.checkpoint.sync()
    (tmp_path / "a-file").unlink()
    with pytest.raises(RuntimeError, match=r"step 3 was not committed.*a-file"):
        mended.save(4)
    mended.save(5)
    mended.close()
    assert [c.step for c in store.list()] == [1, 5]
