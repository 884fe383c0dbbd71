"""The `shardflow data` commands, run as a user runs them: the real console script."""

from __future__ import annotations

import json
import posixpath

import pytest

from shardflow.storage import open_dataset, resolve

from .conftest import TEST_SECRET, Location, run_cli


# Eight CLI runs: gs:// (slowest to start) is left to the storage suite; az:// parses a connection string.
@pytest.mark.parametrize("shared_location", ["file", "s3", "az"], indirect=True)
def test_synth_inspect_verify_gc(shared_location: Location) -> None:
    loc = shared_location
    synth = run_cli("data", "synth", "--rows", "12000", "--days", "3", "--rows-per-shard", "3000", "--seed", "4",
                    "--output", loc.url, *loc.cli_options)
    assert "committed" in synth.stdout and "version 1" in synth.stdout and "optimal AUC 0.8" in synth.stdout

    inspect = run_cli("data", "inspect", loc.url, *loc.cli_options)
    assert "12,000 rows, 6 shards" in inspect.stdout
    for text in ("day=2026-01-03/part-all-", "C26", "string", "optimal_auc"):
        assert text in inspect.stdout
    manifest = json.loads(run_cli("data", "inspect", loc.url, "--json", *loc.cli_options).stdout)
    assert sum(s["rows"] for s in manifest["shards"]) == 12000
    assert {s["partition"]["day"] for s in manifest["shards"]} == {"2026-01-01", "2026-01-02", "2026-01-03"}

    verify = run_cli("data", "verify", loc.url, *loc.cli_options)
    assert "ok" in verify.stdout and "6 shards" in verify.stdout

    append = run_cli("data", "synth", "--rows", "2000", "--start-date", "2026-01-04", "--append", "--seed", "4",
                     "--output", loc.url, *loc.cli_options)
    assert "version 2: 14,000 rows" in append.stdout

    # Corrupt one shard and delete another: verify fails and names both.
    fs, root = resolve(loc.url, loc.storage_options)
    bad, gone = manifest["shards"][1]["path"], manifest["shards"][4]["path"]
    data = bytearray(fs.cat_file(posixpath.join(root, bad)))
    data[100] ^= 0x55
    fs.pipe_file(posixpath.join(root, bad), bytes(data))
    fs.rm_file(posixpath.join(root, gone))
    failed = run_cli("data", "verify", loc.url, *loc.cli_options, check=False)
    assert failed.returncode == 1
    assert bad in failed.stderr and gone in failed.stderr and "2 of 7 shards are bad" in failed.stderr
    assert "Traceback" not in failed.stderr

    leftover = "day=2026-01-01/part-all-0123456789abcdef0123.parquet"  # as a killed writer leaves it
    fs.pipe_file(posixpath.join(root, leftover), b"x" * 10)
    kept = run_cli("data", "gc", loc.url, *loc.cli_options)
    assert "removed 0 file(s)" in kept.stdout and "younger than 1d" in kept.stdout
    gc = run_cli("data", "gc", loc.url, "--grace", "0", *loc.cli_options)
    assert f"removed {leftover}" in gc.stdout and "removed 1 file(s)" in gc.stdout
    refused = run_cli("data", "gc", loc.url.rsplit("/", 1)[0], "--grace", "0", *loc.cli_options, check=False)
    assert refused.returncode == 2 and "refusing to gc" in refused.stderr

    for proc in (synth, inspect, verify, append, failed, kept, gc, refused):
        assert not loc.secret or loc.secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["data", "inspect", "{missing}"], "No committed dataset at"),
    (["data", "synth", "--rows", "10", "--output", "{missing}", "--start-date", "2026-13-01"], "`start_date`"),
    (["data", "synth", "--rows", "10", "--output", "{missing}", "-o", "novalue"], "`--storage-option`"),
    (["data", "gc", "{missing}", "--grace", "soon"], "Invalid value for '--grace'"),
])
def test_bad_input_gets_a_clear_error(tmp_path, args: list[str], message: str) -> None:
    missing = str(tmp_path / "nothing-here")
    proc = run_cli(*[a.replace("{missing}", missing) for a in args], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_remote_errors_name_the_url_and_hide_secrets(s3_server) -> None:
    url = f"s3://{s3_server.bucket}/no-dataset-here"
    proc = run_cli("data", "inspect", url, *s3_server.cli_options, check=False)
    assert proc.returncode == 2 and url in proc.stderr and TEST_SECRET not in proc.stderr
    unreachable = ["-o", "endpoint_url=http://127.0.0.1:9", "-o", "key=k", "-o", f"secret={TEST_SECRET}",
                   "-o", "config_kwargs.retries.max_attempts=1", "-o", "client_kwargs.region_name=us-east-1"]
    proc = run_cli("data", "verify", "s3://bucket/x", *unreachable, check=False, timeout=120)
    assert proc.returncode == 2 and "s3://bucket/x" in proc.stderr, proc.stderr
    assert TEST_SECRET not in proc.stderr and "Traceback" not in proc.stderr


def test_written_dataset_opens_from_python(tmp_path) -> None:
    url = str(tmp_path / "clicks")
    run_cli("data", "synth", "--rows", "5000", "--output", url)
    dataset = open_dataset(url)
    assert dataset.manifest.rows == 5000 and dataset.verify() == []


def test_malformed_manifest_is_one_line_not_a_traceback(tmp_path) -> None:
    url = str(tmp_path / "clicks")
    run_cli("data", "synth", "--rows", "100", "--output", url)
    history = tmp_path / "clicks" / "_manifests" / "v00000001.json"
    data = json.loads(history.read_text())
    data["schema"] = {}
    history.write_text(json.dumps(data))
    proc = run_cli("data", "inspect", url, check=False)
    assert proc.returncode == 2 and "v00000001.json: missing or malformed field" in proc.stderr
    assert "Traceback" not in proc.stderr
