"""Object storage that misbehaves: every write ends whole or invisible, and nothing is left behind.

The S3 test server (moto) sits behind :class:`tests.helpers.faulty_proxy.FaultyProxy`, which
answers a seeded share of requests with 503 SlowDown or 500, resets connections before a
reply, delays some, and on request drops the reply of one chosen request after the server
acted on it. Clients reach the store only through the proxy; checks afterwards go to the
server directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.storage import CheckpointStore, DatasetWriter, ShardCache, collect_garbage, open_dataset, resolve
from shardflow.storage.gc import abort_stale_uploads
from shardflow.storage.lease import Lease, LeaseHeldError
from shardflow.storage.records import RecordLog
from shardflow.storage.urls import with_retry_defaults

from .conftest import TEST_KEY, TEST_SECRET, S3Server, run_cli
from .helpers.faulty_proxy import Faults, FaultyProxy, Request, exclusive_put

# Few enough faults that bounded retries (5 attempts per call) always get through.
MISBEHAVING = Faults(slowdown=0.04, error=0.04, reset=0.04, latency=0.04, latency_s=0.2)


def misbehave(proxy: FaultyProxy) -> None:
    """From now on: random faults, and each kind at least once (a short run may draw none of one)."""
    proxy.set_faults(MISBEHAVING)
    proxy.each_fault_once()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultyProxy]:
    """A proxy in front of the S3 test server that behaves until a test sets faults or rules."""
    with FaultyProxy(s3_server.endpoint, seed=15) as p:
        yield p


def options(proxy: FaultyProxy) -> dict[str, Any]:
    """Storage options that reach the test server through ``proxy``."""
    return {"endpoint_url": proxy.endpoint, "key": TEST_KEY, "secret": TEST_SECRET,
            "client_kwargs": {"region_name": "us-east-1"}}


def cli_options(proxy: FaultyProxy) -> list[str]:
    return ["-o", f"endpoint_url={proxy.endpoint}", "-o", f"key={TEST_KEY}", "-o", f"secret={TEST_SECRET}",
            "-o", "client_kwargs.region_name=us-east-1"]


def s3_client(server: S3Server) -> Any:
    """boto3 straight to the server, for checks the proxy must not disturb."""
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=TEST_KEY,
                        aws_secret_access_key=TEST_SECRET, region_name="us-east-1")


def unfinished_uploads(server: S3Server, prefix: str) -> list[str]:
    return [u["Key"] for u in s3_client(server).list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
            .get("Uploads", [])]


def fresh(server: S3Server, name: str) -> tuple[str, str]:
    """A new ``(url, key prefix)`` in the test bucket."""
    prefix = f"flaky-{name}-{uuid.uuid4().hex[:8]}"
    return f"s3://{server.bucket}/{prefix}", prefix


def assert_whole(url: str, server: S3Server, *, versions: int = 1) -> None:
    """Every object the latest manifest references is there with its recorded size and checksum,
    no shard is listed twice, and the write committed exactly ``versions`` versions (a retried
    commit must not have made another)."""
    dataset = open_dataset(url, storage_options=server.storage_options)
    assert dataset.manifest.version == versions
    paths = [s.path for s in dataset.manifest.shards]
    assert len(paths) == len(set(paths)) and paths
    assert dataset.verify() == []


def assert_every_fault_injected(proxy: FaultyProxy) -> None:
    assert all(proxy.injected[kind] > 0 for kind in ("slowdown", "error", "reset", "latency")), \
        (proxy.injected, proxy.requests)


# -- retries are the libraries' own, bounded, and the user's settings win -------------------------
@pytest.mark.timeout(90)
def test_s3_gets_bounded_standard_retries_unless_the_user_says_otherwise(proxy, s3_server) -> None:
    assert with_retry_defaults("s3://b/x", {})["config_kwargs"]["retries"] == {"mode": "standard", "max_attempts": 4}
    assert with_retry_defaults("/tmp/x", {}) == {} and with_retry_defaults("memory://x", {"a": 1}) == {"a": 1}
    mine = with_retry_defaults("s3://b/x", {"config_kwargs": {"retries": {"max_attempts": 0}, "read_timeout": 3}})
    assert mine["config_kwargs"] == {"retries": {"mode": "standard", "max_attempts": 0}, "read_timeout": 3}

    url, prefix = fresh(s3_server, "retries")
    s3_client(s3_server).put_object(Bucket=s3_server.bucket, Key=f"{prefix}/x", Body=b"x")
    proxy.set_faults(Faults(error=1.0))  # every request a 500: retried, then given up
    fs, path = resolve(f"{url}/x", options(proxy))
    assert fs.s3.meta.config.retries["mode"] == "standard"  # what the client really runs with
    started = time.monotonic()
    with pytest.raises(OSError):
        fs.cat_file(path)
    assert proxy.requests == 5 and time.monotonic() - started < 60  # 1 + 4 retries, with backoff

    fs, path = resolve(f"{url}/x", {**options(proxy), "config_kwargs": {"retries": {"max_attempts": 0}}})
    with pytest.raises(OSError):
        fs.cat_file(path)
    assert proxy.requests == 6  # the user's setting: no retry

    proxy.set_faults(Faults())  # what retries are for: throttled, then cut off, then through
    for fault in ("slowdown", "reset", "error"):
        proxy.add_rule(lambda r: True, fault)
    fs, path = resolve(f"{url}/x", options(proxy))
    assert fs.cat_file(path) == b"x"
    assert proxy.injected["slowdown"] == proxy.injected["reset"] == 1


# -- whole commands through a misbehaving store --------------------------------------------------------
@pytest.mark.timeout(240)
def test_synth_pipeline_verify_and_gc_through_a_misbehaving_store(proxy, s3_server) -> None:
    raw, raw_prefix = fresh(s3_server, "raw")
    out, out_prefix = fresh(s3_server, "out")
    misbehave(proxy)
    run_cli("data", "synth", "--rows", "4000", "--days", "2", "--rows-per-shard", "1000", "--seed", "3",
            "--output", raw, *cli_options(proxy), timeout=200)
    run_cli("pipeline", "run", "--input", raw, "--output", out, "--label", "label", "--engine", "dask",
            "--formats", "parquet", "--rows-per-shard", "1000", *cli_options(proxy), timeout=200)
    run_cli("data", "verify", out, *cli_options(proxy), timeout=120)
    run_cli("data", "gc", out, *cli_options(proxy), timeout=120)
    assert_every_fault_injected(proxy)
    for url in (raw, out):
        assert_whole(url, s3_server)
    assert open_dataset(out, storage_options=s3_server.storage_options).manifest.rows == 4000
    assert unfinished_uploads(s3_server, raw_prefix) == unfinished_uploads(s3_server, out_prefix) == []


@pytest.mark.timeout(240)
def test_beam_pipeline_through_a_misbehaving_store(proxy, s3_server) -> None:
    raw, _ = fresh(s3_server, "raw-beam")
    out, out_prefix = fresh(s3_server, "out-beam")
    run_cli("data", "synth", "--rows", "3000", "--days", "1", "--rows-per-shard", "1000", "--output", raw,
            *cli_options(proxy), timeout=120)
    misbehave(proxy)
    run_cli("pipeline", "run", "--input", raw, "--output", out, "--label", "label", "--engine", "beam",
            "--rows-per-shard", "1000", *cli_options(proxy), timeout=200)
    assert_every_fault_injected(proxy)
    assert_whole(out, s3_server)
    assert open_dataset(out, storage_options=s3_server.storage_options).manifest.rows == 3000
    assert unfinished_uploads(s3_server, out_prefix) == []


def _small_dataset(url: str, server: S3Server, rows: int = 3000, shards: int = 6) -> None:
    with DatasetWriter(url, name="test", storage_options=server.storage_options) as writer:
        for i in range(shards):
            table = pa.table({"x": pa.array(range(i * rows, (i + 1) * rows), pa.int64())})
            path = writer.staging_path(".parquet")
            pq.write_table(table, path)
            writer.publish(path, split="train", rows=rows, format="parquet")
        writer.commit(schema=table.schema)


@pytest.mark.timeout(120)
def test_shard_cache_reads_through_a_misbehaving_store(proxy, s3_server, tmp_path) -> None:
    url, _ = fresh(s3_server, "cache")
    _small_dataset(url, s3_server)
    misbehave(proxy)
    dataset = open_dataset(url, storage_options=options(proxy))
    shards = dataset.shards() * 3
    with ShardCache(str(tmp_path / "cache"), max_bytes=1 << 30, workers=3) as cache:
        tables = [pq.read_table(path) for path in cache.iter_local(dataset, shards, ahead=3)]
    assert [t["x"][0].as_py() for t in tables] == [i * 3000 for i in range(6)] * 3
    assert cache.stats.downloads == 6
    assert proxy.injected["slowdown"] + proxy.injected["error"] + proxy.injected["reset"] > 0, proxy.injected


@pytest.mark.timeout(180)
def test_checkpoint_publish_and_download_through_a_misbehaving_store(proxy, s3_server, tmp_path) -> None:
    url, prefix = fresh(s3_server, "ckpt")
    store = CheckpointStore(url, storage_options=options(proxy))
    misbehave(proxy)
    for step in (10, 20):
        local = tmp_path / f"local-{step}"
        (local / "sub").mkdir(parents=True)
        for i in range(8):
            (local / ("sub" if i % 2 else "") / f"f{i}.data").write_bytes(os.urandom(40_000 + i + step))
        store.publish(str(local), step)
    proc = run_cli("checkpoints", "download", url, str(tmp_path / "dest"), "--json", *cli_options(proxy), timeout=120)
    assert json.loads(proc.stdout)["step"] == 20
    for f in store.get(20).files:
        assert (tmp_path / "dest" / f["path"]).read_bytes() == (tmp_path / "local-20" / f["path"]).read_bytes()
    assert_every_fault_injected(proxy)
    direct = CheckpointStore(url, storage_options=s3_server.storage_options)
    assert direct.steps() == [10, 20] and direct.uncommitted() == {}  # one upload per checkpoint, none cut short
    for checkpoint in direct.list():
        direct.verify(checkpoint)
    assert unfinished_uploads(s3_server, prefix) == []


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_training_saves_and_restores_checkpoints_through_a_misbehaving_store(proxy, s3_server, tmp_path) -> None:
    """A local cluster trains from a remote dataset (through the shard cache), checkpointing to
    the store, and resumes from it; every request through a misbehaving proxy."""
    from shardflow.pipelines.synth import SynthConfig, synthesize

    data, _ = fresh(s3_server, "train-data")
    checkpoints, prefix = fresh(s3_server, "train-ckpt")
    raw = str(tmp_path / "raw")
    synthesize(raw, SynthConfig(rows=8000, days=1, rows_per_shard=4000))
    run_cli("pipeline", "run", "--input", raw, "--output", data, "--label", "label", "--engine", "dask",
            "--formats", "parquet", "--rows-per-shard", "2000", *cli_options(proxy), timeout=200)
    misbehave(proxy)
    args = ["train", "--data", data, "--run-dir", str(tmp_path / "run"), "--cluster", "local", "--workers", "1",
            "--ps", "1", "--format", "parquet", "--checkpoint-dir", checkpoints, "--checkpoint-every", "10",
            "--eval-every", "1000", *cli_options(proxy)]
    first = run_cli(*args, "--steps", "20", timeout=400)
    assert "0 → 20" in first.stdout, first.stdout
    second = run_cli(*args, "--steps", "30", timeout=400)
    assert "resumed from 20" in second.stdout and "20 → 30" in second.stdout, second.stdout
    assert proxy.injected["slowdown"] + proxy.injected["error"] + proxy.injected["reset"] > 0, proxy.injected
    direct = CheckpointStore(checkpoints, storage_options=s3_server.storage_options)
    assert direct.steps()[-1] == 30
    for checkpoint in direct.list():
        direct.verify(checkpoint)
    assert unfinished_uploads(s3_server, prefix) == []


# -- a writer killed during a multipart upload ---------------------------------------------------------
_UPLOAD = """
import sys
from shardflow.storage import resolve
fs, path = resolve(sys.argv[1], {"endpoint_url": sys.argv[3], "key": sys.argv[4], "secret": sys.argv[5]})
# publish_file's own call (fs.put_file), with 5 MiB parts (S3's least) instead of 50 MiB to keep it small
fs.put_file(sys.argv[2], path, chunksize=5 << 20)
"""


def _parts_of(server: S3Server, key: str) -> int:
    client = s3_client(server)
    uploads = client.list_multipart_uploads(Bucket=server.bucket, Prefix=key).get("Uploads", [])
    return sum(len(client.list_parts(Bucket=server.bucket, Key=key, UploadId=u["UploadId"]).get("Parts", []))
               for u in uploads)


@pytest.mark.timeout(120)
def test_a_writer_killed_mid_multipart_upload_leaves_no_object_and_gc_aborts_the_upload(
        proxy, s3_server, tmp_path) -> None:
    url, prefix = fresh(s3_server, "mpu")
    name = "part-train-0123456789abcdef0123.parquet"
    key = f"{prefix}/{name}"
    local = tmp_path / "big"
    local.write_bytes(os.urandom(12 << 20))  # three parts
    later_parts = proxy.add_rule(lambda r: r.method == "PUT" and "partNumber=1&" not in r.path + "&"
                                 and "partNumber=" in r.path, "stall", times=None)
    writer = subprocess.Popen([sys.executable, "-c", _UPLOAD, f"{url}/{name}", str(local), proxy.endpoint,
                               TEST_KEY, TEST_SECRET], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (later_parts.hits and _parts_of(s3_server, key) >= 1):  # mid-upload: part 1 stored, the rest held
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr and writer.stderr.read()
            time.sleep(0.1)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    client = s3_client(s3_server)
    assert "Contents" not in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)  # no object appeared
    assert unfinished_uploads(s3_server, prefix) == [key]

    # A live writer's upload looks just the same: idle for less than the threshold, it is left alone.
    # (moto reports every upload as initiated in 2010; the part's upload time decides here.)
    fs, root = resolve(url, options(proxy))
    assert abort_stale_uploads(fs, root) == []
    assert collect_garbage(url, storage_options=options(proxy), grace_seconds=3600, force=True).aborted_uploads == []
    assert unfinished_uploads(s3_server, prefix) == [key]
    dry = run_cli("data", "gc", url, "--force", "--grace", "0", "--dry-run", *cli_options(proxy))
    assert f"would abort the unfinished multipart upload of {name}" in dry.stdout
    assert unfinished_uploads(s3_server, prefix) == [key]
    gc = run_cli("data", "gc", url, "--force", "--grace", "0", *cli_options(proxy))
    assert f"aborted the unfinished multipart upload of {name}" in gc.stdout, gc.stdout
    assert "aborted 1 unfinished upload(s)" in gc.stdout
    assert unfinished_uploads(s3_server, prefix) == []
    assert "Contents" not in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)


# -- a lost reply is our own success; another writer's file is a conflict ------------------------------
@dataclass(frozen=True)
class Create:
    """One kind of exclusive create: what it writes, where, and how a conflict shows."""

    name: str
    relative: str  # the created object's path under the URL
    write: Callable[[str, dict[str, Any], Any], Any]  # (url, options, tmp_path) -> what the write returned
    check: Callable[[str, S3Server, Any], None]  # (url, server, returned): the write is committed once, as ours
    conflict: type[Exception]
    says: str | None  # in the conflict's message


def _commit_dataset(url: str, opts: dict[str, Any], tmp_path: Any) -> Any:
    with DatasetWriter(url, name="lost-reply", storage_options=opts) as writer:
        table = pa.table({"x": pa.array(range(1000), pa.int64())})
        path = writer.staging_path(".parquet")
        pq.write_table(table, path)
        writer.publish(path, split="train", rows=1000, format="parquet")
        return writer.commit(schema=table.schema)


def _check_dataset(url: str, server: S3Server, manifest: Any) -> None:
    assert_whole(url, server)
    assert open_dataset(url, storage_options=server.storage_options).manifest == manifest


def _publish_checkpoint(url: str, opts: dict[str, Any], tmp_path: Any) -> Any:
    local = tmp_path / "ckpt"
    local.mkdir(exist_ok=True)
    (local / "model.data").write_bytes(b"weights" * 1000)
    return CheckpointStore(url, storage_options=opts).publish(str(local), 10)


def _check_checkpoint(url: str, server: S3Server, checkpoint: Any) -> None:
    store = CheckpointStore(url, storage_options=server.storage_options)
    assert store.steps() == [10] and store.get(10) == checkpoint
    store.verify(checkpoint)


def _take_lease(url: str, opts: dict[str, Any], tmp_path: Any) -> Any:
    lease = Lease(url, what="test", seconds=60, storage_options=opts).acquire()
    lease.check()  # still ours: no LeaseLostError
    return lease.holder


def _check_lease(url: str, server: S3Server, holder: str) -> None:
    records = RecordLog(url, "l", storage_options=server.storage_options).list()
    assert [(r.number, r.data["holder"]) for r in records] == [(1, holder)]


def _append_record(url: str, opts: dict[str, Any], tmp_path: Any) -> Any:
    return RecordLog(url, "p", storage_options=opts).append({"model": "m", "step": 10})


def _check_record(url: str, server: S3Server, record: Any) -> None:
    records = RecordLog(url, "p", storage_options=server.storage_options).list()
    assert [(r.number, r.data) for r in records] == [(1, record.data)]


CREATES = [
    Create("dataset commit", "_manifests/v00000001.json", _commit_dataset, _check_dataset, FileExistsError,
           "another writer committed version 1"),
    Create("checkpoint record", "_checkpoints/c000000000010.json", _publish_checkpoint, _check_checkpoint,
           FileExistsError, "a checkpoint of step 10 is already committed"),
    Create("lease", "l00000001.json", _take_lease, _check_lease, LeaseHeldError, "another process took the lease"),
    Create("promotion record", "p00000001.json", _append_record, _check_record, FileExistsError,
           "another writer created record 1"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("create", CREATES, ids=lambda c: c.name.replace(" ", "-"))
def test_a_lost_reply_to_an_exclusive_create_is_our_own_success(create: Create, proxy, s3_server, tmp_path) -> None:
    url, _ = fresh(s3_server, "lost")
    target = f"/{url.split('://', 1)[1]}/{create.relative}"
    # The server creates the object; the client never hears, and its retry finds the object there.
    lost = proxy.add_rule(exclusive_put(rf"^{target}(\?|$)"), "drop_reply")
    returned = create.write(url, options(proxy), tmp_path)
    assert lost.hits == 1 and proxy.injected["drop_reply"] == 1
    create.check(url, s3_server, returned)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("create", CREATES, ids=lambda c: c.name.replace(" ", "-"))
def test_another_writers_file_is_still_a_conflict(create: Create, proxy, s3_server, tmp_path) -> None:
    """Another writer creates the object just before ours arrives; ours is reset unanswered (never
    forwarded), and its retry finds the other's file: a conflict, however the retry went."""
    url, prefix = fresh(s3_server, "rival")
    key = f"{prefix}/{create.relative}"
    rival = json.dumps({"number": 1, "step": 10, "version": 1, "writer": "another", "holder": "another"}).encode()

    def rival_first(request: Request) -> bool:
        if not exclusive_put(rf"^/{s3_server.bucket}/{key}(\?|$)")(request):
            return False
        s3_client(s3_server).put_object(Bucket=s3_server.bucket, Key=key, Body=rival)
        return True

    raced = proxy.add_rule(rival_first, "reset")
    with pytest.raises(create.conflict, match=create.says):
        create.write(url, options(proxy), tmp_path)
    assert raced.hits == 1
    assert s3_client(s3_server).get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == rival  # untouched
