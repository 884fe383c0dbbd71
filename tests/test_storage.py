"""The storage suite: run against memory://, a local directory and s3:// on a real S3-API server."""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from shardflow.storage import (
    ChecksumMismatchError,
    DatasetWriter,
    ShardCache,
    UnsafePathError,
    collect_garbage,
    open_dataset,
    read_parquet,
    resolve,
    write_parquet_shards,
)
from shardflow.storage.dataset import committed_versions
from shardflow.storage.manifest import MANIFEST_NAME, Manifest

from .conftest import TEST_SECRET, Location
from .helpers import SHARDFLOW_EXE

SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string()), ("x", pa.float64())])


def make_table(start: int, n: int) -> pa.Table:
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "text": [f"row {i} ✓" for i in range(start, start + n)],
        "x": [i * 0.5 for i in range(start, start + n)],
    }, schema=SCHEMA)


def write(loc: Location, table: pa.Table, *, mode: str = "overwrite", partition: dict | None = None,
          rows_per_shard: int = 100):
    with DatasetWriter(loc.url, name="test", params={"rows": table.num_rows}, mode=mode,
                       storage_options=loc.storage_options) as w:
        write_parquet_shards(w, table.to_batches(max_chunksize=64), split="train", partition=partition,
                             rows_per_shard=rows_per_shard)
        return w.commit(schema=SCHEMA)


def _stamp(info: dict) -> object:
    """When a file was last written, whatever the backend calls it (s3fs, local, gcsfs/memory, adlfs)."""
    stamp = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("created") \
        or info.get("last_modified")
    assert stamp is not None, f"no modification time in {sorted(info)}"
    return stamp


def files_under(loc: Location) -> set[str]:
    fs, root = resolve(loc.url, loc.storage_options)
    fs.invalidate_cache()
    if not fs.exists(root):
        return set()
    return {p[len(root) + 1:] for p in fs.find(root)}


def test_shards_are_invisible_until_the_manifest_commits(location: Location) -> None:
    with DatasetWriter(location.url, name="test", storage_options=location.storage_options) as w:
        shards = write_parquet_shards(w, make_table(0, 250).to_batches(), split="train", rows_per_shard=100)
        assert [s.rows for s in shards] == [100, 100, 50]
        assert {s.path for s in shards} <= files_under(location)  # published ...
        with pytest.raises(FileNotFoundError, match="No committed dataset"):
            open_dataset(location.url, storage_options=location.storage_options)  # ... but not visible
        manifest = w.commit(schema=SCHEMA)
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    assert dataset.manifest == manifest and manifest.version == 1 and manifest.rows == 250
    assert read_parquet(dataset).equals(make_table(0, 250))
    assert manifest.feature_spec["text"]["dtype"] == "string" and manifest.feature_spec["id"]["dtype"] == "int64"
    assert not any(p.startswith("_staging") for p in files_under(location))


def test_rewriting_the_same_content_is_idempotent(location: Location) -> None:
    first = write(location, make_table(0, 250))
    before = files_under(location)
    again = write(location, make_table(0, 250))
    assert again.version == first.version == 1
    assert files_under(location) == before
    changed = write(location, make_table(0, 251))
    assert changed.version == 2 and changed.rows == 251


def test_append_adds_a_version_without_rewriting_old_shards(location: Location) -> None:
    v1 = write(location, make_table(0, 200), partition={"day": "2026-01-01"})
    fs, root = resolve(location.url, location.storage_options)
    old_bytes = {s.path: fs.cat_file(posixpath.join(root, s.path)) for s in v1.shards}
    old_info = {s.path: _stamp(fs.info(posixpath.join(root, s.path))) for s in v1.shards}
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    v2 = write(location, make_table(200, 150), partition={"day": "2026-01-02"}, mode="append")
    assert v2.version == 2 and v2.rows == 350
    assert v2.shards[: len(v1.shards)] == v1.shards
    assert all(s.path.startswith("day=2026-01-02/") for s in v2.shards[len(v1.shards):])
    assert {p: fs.cat_file(posixpath.join(root, p)) for p in old_bytes} == old_bytes
    fs.invalidate_cache()
    assert {p: _stamp(fs.info(posixpath.join(root, p))) for p in old_info} == old_info  # not rewritten
    assert [e["operation"] for e in v2.lineage] == ["overwrite", "append"]
    # Readers pinned to the old version still see exactly it; latest sees both days.
    old = open_dataset(location.url, storage_options=location.storage_options, version=1)
    assert read_parquet(old).equals(make_table(0, 200))
    latest = open_dataset(location.url, storage_options=location.storage_options)
    assert read_parquet(latest).equals(make_table(0, 350))
    # Appending the same partition again changes nothing.
    assert write(location, make_table(200, 150), partition={"day": "2026-01-02"}, mode="append").version == 2
    with pytest.raises(FileNotFoundError, match="no committed version 7"):
        open_dataset(location.url, storage_options=location.storage_options, version=7)


def test_append_with_another_schema_is_refused(location: Location) -> None:
    write(location, make_table(0, 10))
    other = pa.schema([("id", pa.int32())])
    with DatasetWriter(location.url, name="test", mode="append", storage_options=location.storage_options) as w:
        with pytest.raises(ValueError, match="schema differs"):
            w.commit(schema=other)
    assert open_dataset(location.url, storage_options=location.storage_options).manifest.version == 1


def test_a_write_that_fails_midway_leaves_the_previous_version(location: Location) -> None:
    write(location, make_table(0, 100))

    def failing_batches():
        yield from make_table(1000, 300).to_batches(max_chunksize=50)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        with DatasetWriter(location.url, name="test", storage_options=location.storage_options) as w:
            write_parquet_shards(w, failing_batches(), split="train", rows_per_shard=100)
            w.commit(schema=SCHEMA)
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    assert dataset.manifest.version == 1 and read_parquet(dataset).equals(make_table(0, 100))
    assert dataset.verify() == []


def test_killed_writer_process_leaves_nothing_visible(shared_location: Location) -> None:
    from .conftest import run_cli

    loc = shared_location
    run_cli("data", "synth", "--rows", "20000", "--rows-per-shard", "5000", "--output", loc.url, *loc.cli_options)
    committed = open_dataset(loc.url, storage_options=loc.storage_options).manifest
    proc = subprocess.Popen([SHARDFLOW_EXE, "data", "synth", "--rows", "3000000", "--rows-per-shard", "20000", "--seed", "9",
                             "--output", loc.url, *loc.cli_options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    known = {s.path for s in committed.shards} | {MANIFEST_NAME, "_manifests/v00000001.json"}
    deadline = time.monotonic() + 120
    try:
        while not {p for p in files_under(loc) if "part-" in p and not p.startswith("_staging")} - known:
            assert proc.poll() is None, f"writer ended before it could be killed: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "writer published no shard within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    orphans = {p for p in files_under(loc) if "part-" in p} - known
    assert orphans, "the kill should have interrupted a write in progress"
    dataset = open_dataset(loc.url, storage_options=loc.storage_options)
    assert dataset.manifest == committed  # previous version, untouched
    assert dataset.verify() == []
    # gc with no grace removes the killed write's leftovers and nothing committed.
    report = collect_garbage(loc.url, storage_options=loc.storage_options, grace_seconds=0)
    assert orphans <= set(report.removed)
    remaining = files_under(loc)
    assert not (remaining & orphans) and known <= remaining
    assert not any(p.startswith("_staging/") for p in remaining)
    if loc.backend == "file":
        assert os.listdir(os.path.join(loc.url, "_staging")) == []  # the killed writer's directory is gone too
    assert open_dataset(loc.url, storage_options=loc.storage_options).verify() == []


def test_checksum_mismatch_is_detected_and_named(location: Location) -> None:
    manifest = write(location, make_table(0, 300))
    fs, root = resolve(location.url, location.storage_options)
    bad = manifest.shards[1]
    data = bytearray(fs.cat_file(posixpath.join(root, bad.path)))
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    fs.pipe_file(posixpath.join(root, bad.path), bytes(data))
    fs.rm_file(posixpath.join(root, manifest.shards[2].path))
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    problems = dataset.verify()
    assert [(p.shard.path, p.problem.split(" ")[0]) for p in problems] == [(bad.path, "checksum"),
                                                                           (manifest.shards[2].path, "missing")]
    assert bad.path in problems[0].url
    with pytest.raises(ChecksumMismatchError, match=bad.path):
        dataset.verify(raise_on_error=True)


@pytest.mark.parametrize("evil", ["../outside.parquet", "/etc/passwd", "s3://other-bucket/x.parquet",
                                  "day=1/../../x.parquet", "a//b.parquet", "C:/x.parquet", "./x.parquet"])
def test_shard_paths_escaping_the_root_are_rejected(location: Location, evil: str) -> None:
    manifest = write(location, make_table(0, 10))
    data = json.loads(manifest.to_json())
    data["shards"][0]["path"] = evil
    fs, root = resolve(location.url, location.storage_options)
    fs.pipe_file(posixpath.join(root, "_manifests/v00000001.json"), json.dumps(data).encode())
    with pytest.raises(UnsafePathError, match="escapes the dataset root") as info:
        open_dataset(location.url, storage_options=location.storage_options)
    assert repr(evil) in str(info.value)


def test_corrupt_manifest_gets_a_clear_error(location: Location) -> None:
    write(location, make_table(0, 10))
    fs, root = resolve(location.url, location.storage_options)
    fs.pipe_file(posixpath.join(root, "_manifests/v00000001.json"), b'{"format_version": 1, "vers')
    with pytest.raises(ValueError, match="manifest is corrupt"):
        open_dataset(location.url, storage_options=location.storage_options)


def test_cache_fetches_verifies_and_evicts_lru(location: Location, tmp_path) -> None:
    manifest = write(location, make_table(0, 500), rows_per_shard=100)
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    sizes = [s.bytes for s in manifest.shards]
    limit = sizes[0] + sizes[1] + sizes[2] // 2  # room for two shards
    with ShardCache(str(tmp_path / "cache"), max_bytes=limit) as cache:
        paths = [cache.fetch(dataset, s) for s in manifest.shards[:2]]
        assert all(os.path.exists(p) for p in paths) and cache.stats.downloads == 2
        os.utime(paths[0])  # shard 0 is now the most recently used
        time.sleep(0.01)
        cache.fetch(dataset, manifest.shards[0])
        assert cache.stats.hits == 1 and cache.stats.downloads == 2
        third = cache.fetch(dataset, manifest.shards[2])
        assert os.path.exists(paths[0]) and not os.path.exists(paths[1]) and os.path.exists(third)
        assert cache.usage() <= limit
        # A pinned shard survives eviction pressure.
        with cache.pinned(dataset, manifest.shards[3]) as pinned:
            cache.fetch(dataset, manifest.shards[4])
            cache.fetch(dataset, manifest.shards[0])
            assert os.path.exists(pinned)
        # Prefetching iteration yields every shard's bytes in order.
        fs, root = resolve(location.url, location.storage_options)
        for shard, path in zip(manifest.shards, cache.iter_local(dataset, manifest.shards, ahead=2)):
            with open(path, "rb") as f:
                assert f.read() == fs.cat_file(posixpath.join(root, shard.path))
        assert cache.usage() <= limit


def test_cache_rejects_a_corrupt_shard(location: Location, tmp_path) -> None:
    manifest = write(location, make_table(0, 200))
    fs, root = resolve(location.url, location.storage_options)
    path = posixpath.join(root, manifest.shards[0].path)
    data = bytearray(fs.cat_file(path))
    data[10] ^= 1
    fs.pipe_file(path, bytes(data))
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    with ShardCache(str(tmp_path / "cache"), max_bytes=1 << 30) as cache:
        with pytest.raises(ChecksumMismatchError, match=manifest.shards[0].path):
            cache.fetch(dataset, manifest.shards[0])
        with pytest.raises(ChecksumMismatchError):
            list(cache.iter_local(dataset, manifest.shards))  # background errors reach the caller
        assert not os.path.exists(cache.entry_path(manifest.shards[0]))  # the corrupt bytes were never cached
    assert os.listdir(tmp_path / "cache" / "tmp") == []  # after close(): no download left half done


def test_two_processes_share_one_cache(shared_location: Location, tmp_path) -> None:
    loc = shared_location
    manifest = write(loc, make_table(0, 2000), rows_per_shard=100)
    limit = sum(s.bytes for s in manifest.shards[:6])
    cache_dir = tmp_path / "cache"
    script = os.path.join(os.path.dirname(__file__), "helpers", "cache_reader.py")
    procs = [subprocess.Popen([sys.executable, script, loc.url, json.dumps(loc.storage_options), str(cache_dir),
                               str(limit), str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert_readers_ok(procs, outputs, manifest)
    assert ShardCache(str(cache_dir), max_bytes=limit).usage() <= limit
    assert os.listdir(cache_dir / "tmp") == []
    # With room for everything, the two processes download each shard once between them.
    roomy = tmp_path / "roomy"
    procs = [subprocess.Popen([sys.executable, script, loc.url, json.dumps(loc.storage_options), str(roomy),
                               str(1 << 30), str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (3, 4)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert_readers_ok(procs, outputs, manifest)
    assert sum(json.loads(out)["downloads"] for out, _ in outputs) == len(manifest.shards)


def assert_readers_ok(procs, outputs, manifest) -> None:
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
        seen = json.loads(stdout)
        # Every read, in both processes, returned exactly the manifest's bytes.
        assert sorted(seen["checksums"]) == sorted(s.checksum for s in manifest.shards for _ in range(3))


def test_gc_removes_only_old_unreferenced_files(location: Location) -> None:
    v1 = write(location, make_table(0, 200))
    v2 = write(location, make_table(1000, 300))  # overwrite: v1's shards now only in history
    fs, root = resolve(location.url, location.storage_options)
    fs.makedirs(posixpath.join(root, "_staging/abc"), exist_ok=True)
    orphan = "part-train-0123456789abcdef0123.parquet"
    fs.pipe_file(posixpath.join(root, orphan), b"half a shard")
    fs.pipe_file(posixpath.join(root, "_staging/abc/123.parquet"), b"unfinished")
    foreign = ["README.txt", "raw/part-00000.csv", "part-train-mine.parquet"]  # look alike, but not ours
    fs.makedirs(posixpath.join(root, "raw"), exist_ok=True)
    for name in foreign:
        fs.pipe_file(posixpath.join(root, name), b"not ours")
    young = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=3600)
    assert young.removed == [] and orphan in young.too_recent
    assert sorted(young.unknown) == sorted(foreign)
    dry = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0, dry_run=True)
    assert set(dry.removed) == {orphan, "_staging/abc/123.parquet"}
    assert orphan in files_under(location)
    report = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0)
    assert set(report.removed) == set(dry.removed) and report.bytes_freed == len(b"half a shard") + len(b"unfinished")
    assert {s.path for s in v1.shards} <= files_under(location)  # history still references v1
    assert open_dataset(location.url, storage_options=location.storage_options, version=1).verify() == []
    pruned = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0,
                             keep_versions=1)
    v1_only = {s.path for s in v1.shards} - {s.path for s in v2.shards}
    assert v1_only and v1_only <= set(pruned.removed) and "_manifests/v00000001.json" in pruned.removed
    assert set(foreign) <= files_under(location)
    assert open_dataset(location.url, storage_options=location.storage_options).verify() == []
    with pytest.raises(FileNotFoundError, match="no committed version 1"):
        open_dataset(location.url, storage_options=location.storage_options, version=1)


def test_gc_keeps_recently_superseded_versions(location: Location) -> None:
    v1 = write(location, make_table(0, 100))
    write(location, make_table(500, 100))
    report = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=3600,
                             keep_versions=1)
    assert report.removed == []  # v1 was superseded moments ago: a reader may still be on it
    assert read_parquet(open_dataset(location.url, storage_options=location.storage_options, version=1)).num_rows == 100
    assert {s.path for s in v1.shards} <= files_under(location)


def test_gc_refuses_a_url_that_is_not_a_dataset_and_skips_nested_ones(location: Location) -> None:
    inner = location.child("inner")
    manifest = write(inner, make_table(0, 100))
    with pytest.raises(FileNotFoundError, match="refusing to gc"):
        collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0)
    report = collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0, force=True)
    assert report.removed == [] and {f"inner/{s.path}" for s in manifest.shards} <= set(report.unknown)
    assert open_dataset(inner.url, storage_options=inner.storage_options).verify() == []


def test_manifest_round_trips_and_records_lineage(location: Location) -> None:
    manifest = write(location, make_table(0, 50))
    assert Manifest.from_json(manifest.to_json(), where="x") == manifest
    assert manifest.writer["name"] == "test" and manifest.writer["params"] == {"rows": 50}
    assert manifest.lineage[0]["operation"] == "overwrite"
    assert manifest.splits() == {"train": {"shards": 1, "rows": 50, "bytes": manifest.shards[0].bytes}}


def _race(writers: list[DatasetWriter]) -> dict[str, Manifest | Exception]:
    """Commit every writer from its own thread, released together at the last step of a commit.

    Each thread waits at the barrier once it has read the latest version and checked its
    shards, just before the exclusive create of the next version: all of them have seen
    the same version by then, so only that create can tell them apart.
    """
    barrier = threading.Barrier(len(writers), timeout=60)
    for w in writers:
        check = w._check_in_place  # the step right before the create; AttributeError if it is renamed
        w._check_in_place = lambda shards, check=check: (check(shards), barrier.wait())
    results: dict[str, Manifest | Exception] = {}

    def commit(w: DatasetWriter) -> None:
        try:
            results[w.name] = w.commit(schema=SCHEMA)
        except Exception as e:  # noqa: BLE001 - whatever it raises is the result the test looks at
            results[w.name] = e

    threads = [threading.Thread(target=commit, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racing commit hung"
    return results


def test_concurrent_commits_cannot_both_win(location: Location) -> None:
    """Two writers racing from the same version: one commits the next version, the other
    learns so and commits nothing (the create of the version file is exclusive)."""
    write(location, make_table(0, 10))
    tables = {"a": make_table(100, 10), "b": make_table(200, 10)}
    writers = [DatasetWriter(location.url, name=name, storage_options=location.storage_options) for name in tables]
    for w in writers:
        write_parquet_shards(w, tables[w.name].to_batches(), split="train")
    try:
        results = _race(writers)
    finally:
        for w in writers:
            w.close()
    won = {name: r for name, r in results.items() if isinstance(r, Manifest)}
    lost = {name: r for name, r in results.items() if not isinstance(r, Manifest)}
    assert len(won) == 1 and len(lost) == 1, results
    (winner, manifest), (error,) = next(iter(won.items())), lost.values()
    assert manifest.version == 2
    assert isinstance(error, FileExistsError), error
    assert "another writer committed version 2 while this one was writing; nothing was committed" in str(error)
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    assert dataset.manifest == manifest and dataset.manifest.writer["name"] == winner
    assert read_parquet(dataset).equals(tables[winner])
    fs, root = resolve(location.url, location.storage_options)
    assert committed_versions(fs, root) == [1, 2]


def test_a_writer_holding_a_stale_base_cannot_commit(location: Location) -> None:
    """A writer that started from version 1 while another committed version 2 is refused
    before it creates anything, whatever order they wrote their shards in."""
    write(location, make_table(0, 10))
    a = DatasetWriter(location.url, name="a", storage_options=location.storage_options)
    b = DatasetWriter(location.url, name="b", storage_options=location.storage_options)
    with a, b:
        write_parquet_shards(b, make_table(200, 10).to_batches(), split="train")
        write_parquet_shards(a, make_table(100, 10).to_batches(), split="train")
        assert a.commit(schema=SCHEMA).version == 2
        with pytest.raises(FileExistsError, match="another writer committed version 2 since this write started "
                                                  "from version 1; nothing was committed"):
            b.commit(schema=SCHEMA)
    dataset = open_dataset(location.url, storage_options=location.storage_options)
    assert dataset.manifest.writer["name"] == "a" and read_parquet(dataset).equals(make_table(100, 10))
    fs, root = resolve(location.url, location.storage_options)
    assert committed_versions(fs, root) == [1, 2]


def test_a_crash_before_the_manifest_copy_still_shows_the_committed_version(location: Location) -> None:
    write(location, make_table(0, 10))
    v2 = write(location, make_table(0, 20))
    fs, root = resolve(location.url, location.storage_options)
    fs.pipe_file(posixpath.join(root, MANIFEST_NAME), fs.cat_file(posixpath.join(root, "_manifests/v00000001.json")))
    assert open_dataset(location.url, storage_options=location.storage_options).manifest == v2
    assert write(location, make_table(0, 30)).version == 3


def test_commit_refuses_shards_that_vanished(location: Location) -> None:
    with DatasetWriter(location.url, name="test", storage_options=location.storage_options) as w:
        shards = write_parquet_shards(w, make_table(0, 200).to_batches(), split="train", rows_per_shard=100)
        fs, root = resolve(location.url, location.storage_options)
        fs.rm_file(posixpath.join(root, shards[1].path))  # e.g. gc with too short a grace
        with pytest.raises(FileNotFoundError, match=shards[1].path):
            w.commit(schema=SCHEMA)
    with pytest.raises(FileNotFoundError, match="No committed dataset"):
        open_dataset(location.url, storage_options=location.storage_options)


def test_batches_with_another_schema_are_refused(location: Location) -> None:
    other = pa.table({"id": pa.array([1], pa.int32()), "text": ["a"], "x": [1.0]})
    with DatasetWriter(location.url, name="test", storage_options=location.storage_options) as w:
        with pytest.raises(ValueError, match="id: int32"):
            write_parquet_shards(w, make_table(0, 5).to_batches() + other.to_batches(), split="train")


def test_secrets_in_params_and_vendor_errors_are_redacted() -> None:
    from botocore.exceptions import ClientError

    from shardflow.storage.urls import redact_url, translate_errors

    loc = Location("memory", "memory://shardflow-tests/secret-params", {}, [])
    with DatasetWriter(loc.url, name="test", params={"storage_options": {"secret": TEST_SECRET, "anon": False},
                                                     "token": TEST_SECRET, "rows": 3}) as w:
        write_parquet_shards(w, make_table(0, 3).to_batches(), split="train")
        manifest = w.commit(schema=SCHEMA)
    assert TEST_SECRET not in manifest.to_json() and manifest.writer["params"]["rows"] == 3
    error = ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": f"bad signature for {TEST_SECRET}"}},
                        "GetObject")
    with pytest.raises(OSError) as info:
        with translate_errors("s3://bucket/ds", {"secret": TEST_SECRET}):
            raise error
    assert "s3://bucket/ds" in str(info.value) and "SignatureDoesNotMatch" in str(info.value)
    assert TEST_SECRET not in str(info.value) and info.value.__cause__ is None
    assert redact_url("https://user:pw@host/x?sig=abc&y=1") == "https://user:***@host/x?sig=***&y=1"
    assert redact_url("https://TOKEN@host/x") == "https://***@host/x"
    assert redact_url("az://container@account/x") == "az://container@account/x"


def test_gc_aborts_multipart_uploads_a_killed_writer_left(s3_server) -> None:
    import boto3

    loc = Location("s3", f"s3://{s3_server.bucket}/mpu-{os.getpid()}", s3_server.storage_options, [])
    write(loc, make_table(0, 10))
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id="x", aws_secret_access_key="y",
                          region_name="us-east-1")
    key = f"mpu-{os.getpid()}/part-train-0123456789abcdef0123.parquet"
    client.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
    report = collect_garbage(loc.url, storage_options=loc.storage_options, grace_seconds=0)
    assert report.aborted_uploads == ["part-train-0123456789abcdef0123.parquet"] and report.removed == []
    assert not client.list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads")


def test_exclusive_manifest_creation_lets_one_racer_win(location: Location) -> None:
    from shardflow.storage.commit import publish_bytes

    fs, root = resolve(location.url, location.storage_options)
    target = posixpath.join(root, "_manifests/v00000009.json")
    publish_bytes(fs, target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        publish_bytes(fs, target, b"second", exclusive=True)
    assert fs.cat_file(target) == b"first"


def test_gc_during_a_write_leaves_the_writer_alone(location: Location) -> None:
    write(location, make_table(0, 10))
    with DatasetWriter(location.url, name="test", storage_options=location.storage_options) as w:
        first = write_parquet_shards(w, make_table(100, 10).to_batches(), split="train")
        report = collect_garbage(location.url, storage_options=location.storage_options)  # default grace: 1 day
        assert report.removed == [] and {s.path for s in first} <= set(report.too_recent)
        second = write_parquet_shards(w, make_table(200, 10).to_batches(), split="train")
        manifest = w.commit(schema=SCHEMA)
    assert [s.path for s in manifest.shards] == [s.path for s in first + second]
    assert open_dataset(location.url, storage_options=location.storage_options).verify() == []


def test_a_writer_can_commit_twice(location: Location) -> None:
    with DatasetWriter(location.url, name="test", mode="append", storage_options=location.storage_options) as w:
        write_parquet_shards(w, make_table(0, 10).to_batches(), split="train")
        assert w.commit(schema=SCHEMA).version == 1
        write_parquet_shards(w, make_table(10, 10).to_batches(), split="train")
        assert w.commit(schema=SCHEMA).rows == 20


def test_malformed_manifests_name_the_file(location: Location) -> None:
    manifest = write(location, make_table(0, 10))
    fs, root = resolve(location.url, location.storage_options)
    for field, value in (("schema", {}), ("version", "x"), ("created_at", "2026-01-01T00:00:00")):
        data = json.loads(manifest.to_json())
        data[field] = value
        fs.pipe_file(posixpath.join(root, "_manifests/v00000001.json"), json.dumps(data).encode())
        with pytest.raises(ValueError, match="v00000001.json: missing or malformed field"):
            open_dataset(location.url, storage_options=location.storage_options)


def test_gc_removes_temporary_manifest_files(location: Location) -> None:
    write(location, make_table(0, 10))
    fs, root = resolve(location.url, location.storage_options)
    leftover = "_manifests/.tmp-0123456789abcdef-v00000002.json"
    fs.pipe_file(posixpath.join(root, leftover), b"{")
    assert leftover in collect_garbage(location.url, storage_options=location.storage_options, grace_seconds=0).removed


def test_gc_removes_the_staging_directory_it_empties(tmp_path) -> None:
    """Removing a dead writer's staging file makes its directory look new; gc removes it all the same."""
    root = tmp_path / "ds"
    staged = root / "_staging" / "0123456789abcdef"
    staged.mkdir(parents=True)
    (staged / "a1b2c3.parquet").write_bytes(b"half a shard")
    hours_ago = time.time() - 2 * 3600
    for path in (staged / "a1b2c3.parquet", staged):
        os.utime(path, (hours_ago, hours_ago))
    report = collect_garbage(str(root), grace_seconds=3600, force=True)  # a first write that never committed
    assert report.removed == ["_staging/0123456789abcdef/a1b2c3.parquet"]
    assert os.listdir(root / "_staging") == []
