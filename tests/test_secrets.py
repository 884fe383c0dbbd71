"""Credentials given as storage options never reach what shardflow writes or prints: a whole
synth → pipeline → train → checkpoints run on the S3 test server with a recognisable secret,
then every output line, every object in the bucket and every local file is searched for it."""

from __future__ import annotations

import os
import uuid

import boto3
import pytest
import yaml

from .conftest import TEST_KEY, TEST_SECRET, S3Server, run_cli

SECRET = TEST_SECRET.encode()


def _bucket_objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=TEST_KEY,
                          aws_secret_access_key=TEST_SECRET, region_name="us-east-1")
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=server.bucket, Key=item["Key"])["Body"].read()
    return objects


def _local_files(root: str) -> dict[str, bytes]:
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    files[path] = f.read()
    return files


def _assert_no_secret(procs: list, server: S3Server, prefix: str, local_root: str, *, expect: tuple[str, ...]) -> None:
    """Nothing printed, stored under ``prefix`` in the bucket or written under ``local_root`` holds
    the secret; ``expect`` names files that must be among those searched (so the search is not empty)."""
    for proc in procs:
        assert TEST_SECRET not in proc.stdout + proc.stderr, proc.args
    objects = _bucket_objects(server, prefix)
    assert any(k.endswith("manifest.json") for k in objects)
    assert [k for k, data in objects.items() if SECRET in data or TEST_SECRET in k] == []
    files = _local_files(local_root)
    for suffix in expect:
        assert any(p.endswith(suffix) for p in files), (suffix, sorted(files))
    assert [p for p, data in files.items() if SECRET in data] == []


def _unreachable() -> list[str]:
    return ["-o", "endpoint_url=http://127.0.0.1:9", "-o", f"key={TEST_KEY}", "-o", f"secret={TEST_SECRET}",
            "-o", "config_kwargs.retries.max_attempts=1", "-o", "client_kwargs.region_name=us-east-1"]


def test_no_secret_from_data_and_pipeline_commands(s3_server: S3Server, tmp_path) -> None:
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    base, options = f"s3://{s3_server.bucket}/{prefix}", s3_server.cli_options
    (tmp_path / "raw.csv").write_text("id,x,label\n1,0.5,1\n2,1.5,\n3,1.5,1\n")  # row 2: no label
    procs = [
        run_cli("data", "synth", "--rows", "2000", "--days", "2", "--rows-per-shard", "1000", "--output",
                f"{base}/raw", *options),
        run_cli("--log-level", "INFO", "pipeline", "run", "--input", f"{base}/raw", "--output", f"{base}/clicks",
                "--label", "label", "--formats", "parquet,tfrecord", "--rows-per-shard", "1000", *options),
        run_cli("data", "inspect", f"{base}/clicks", "--json", *options),
        run_cli("data", "verify", f"{base}/clicks", *options),
        run_cli("data", "gc", f"{base}/clicks", "--grace", "0", *options),
        # bad rows: the dead letters and the error that points to them
        run_cli("pipeline", "run", "--input", str(tmp_path / "raw.csv"), "--output", f"{base}/strict", "--label",
                "label", *options, check=False),
        run_cli("data", "inspect", f"s3://no-such-bucket-{prefix}/clicks", *options, check=False),
        run_cli("pipeline", "run", "--input", f"{base}/raw", "--output", f"{base}/other", *_unreachable(),
                check=False, timeout=120),
    ]
    assert [p.returncode for p in procs[-3:]] == [2, 2, 2]
    assert "no-such-bucket" in procs[-2].stderr and f"{base}/raw" in procs[-1].stderr
    _assert_no_secret(procs, s3_server, prefix, str(tmp_path), expect=("raw.csv",))


@pytest.mark.parametrize("cluster", ["none", pytest.param("local", marks=pytest.mark.chaos)])
def test_no_secret_from_training_and_checkpoint_commands(cluster: str, s3_server: S3Server, tmp_path,
                                                         monkeypatch) -> None:
    """Training straight on synthesized data (its label column is ``label``). A local cluster
    (1 worker, 1 ps) and an export take another minute or two here, so they run with `make chaos`:
    they add task logs, the tasks' config (read from stdin: never a file) and the export."""
    prefix = f"secrets-{uuid.uuid4().hex[:8]}"
    base, options = f"s3://{s3_server.bucket}/{prefix}", s3_server.cli_options
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where a temporary copy of the config would go
    (tmp_path / "tmp").mkdir()
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": {"hash_buckets": 256, "embedding_dim": 2, "hidden_units": [4],
                                                "min_shard_bytes": 1024}, "train_split": "all", "eval_split": None,
                                      "batch_size": 64, "log_every": 5, "checkpoint": {"every_steps": 5}}))
    run, export = str(tmp_path / "run"), str(tmp_path / "export")
    cluster_args = ["--cluster", cluster] + (["--workers", "1", "--ps", "1"] if cluster == "local" else [])
    procs = [
        run_cli("data", "synth", "--rows", "2000", "--output", f"{base}/clicks", *options),
        run_cli("--log-level", "INFO", "train", str(config), "--data", f"{base}/clicks", "--checkpoint-dir",
                f"{base}/checkpoints", "--run-dir", run, *cluster_args, "--steps", "10", *options, timeout=300),
        run_cli("checkpoints", "list", f"{base}/checkpoints", *options),
        run_cli("train", str(config), "--data", f"{base}/nothing", "--run-dir", run, *cluster_args, *options,
                check=False),
        run_cli("train", str(config), "--data", f"{base}/clicks", "--run-dir", run, *cluster_args, *_unreachable(),
                check=False, timeout=120),
    ]
    assert procs[-2].returncode == 2 and f"{base}/nothing" in procs[-2].stderr
    assert procs[-1].returncode == 2 and f"{base}/clicks" in procs[-1].stderr
    if cluster == "local":  # and the export of a checkpoint (a TensorFlow start more)
        procs.append(run_cli("checkpoints", "export", f"{base}/checkpoints", export, "--format", "saved_model",
                             "--split", "all", *options))
    expect = ("saved_model.pb", "train.yaml") + ((".log", "report.json") if cluster == "local" else ())
    _assert_no_secret(procs, s3_server, prefix, str(tmp_path), expect=expect)
    if cluster == "local":
        assert os.listdir(tmp_path / "tmp") == []  # no copy of the config (it holds the secret) on disk
