"""Shared fixtures: real object-store servers on 127.0.0.1 (S3, GCS, Azure) and one storage suite over every backend."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .helpers import SHARDFLOW_EXE
from .object_servers import AzureServer, GcsServer, azure_server, gcs_server  # noqa: F401 (fixtures)

# Never let a client look for cloud credentials or metadata endpoints outside this machine.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.pop("AWS_PROFILE", None)
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the S3 server's access log

TEST_KEY = "shardflow-test-key"
TEST_SECRET = "shardflow-test-secret-4d1f"  # tests assert this never leaks into output


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    secret: str = TEST_SECRET

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "key": TEST_KEY, "secret": TEST_SECRET,
                "client_kwargs": {"region_name": "us-east-1"}}

    @property
    def cli_options(self) -> list[str]:
        return ["-o", f"endpoint_url={self.endpoint}", "-o", f"key={TEST_KEY}", "-o", f"secret={TEST_SECRET}",
                "-o", "client_kwargs.region_name=us-east-1"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = "shardflow-test"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=TEST_KEY, aws_secret_access_key=TEST_SECRET,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    yield S3Server(endpoint, bucket)
    server.stop()


@dataclass(frozen=True)
class Location:
    """A fresh dataset URL on one backend, with the options to reach it."""

    backend: str
    url: str
    storage_options: dict[str, Any]
    cli_options: list[str]
    secret: str | None = None  # the credential in storage_options, which nothing written may show

    def child(self, name: str) -> Location:
        return Location(self.backend, f"{self.url}/{name}", self.storage_options, self.cli_options, self.secret)


_SERVERS = {"s3": "s3_server", "gs": "gcs_server", "az": "azure_server"}  # backend: its session fixture


def _object_store(request: pytest.FixtureRequest, name: str) -> Location:
    """A fresh URL on the session's server for ``request.param`` (s3, gs or az)."""
    server: S3Server | GcsServer | AzureServer = request.getfixturevalue(_SERVERS[request.param])
    root = server.container if isinstance(server, AzureServer) else server.bucket
    return Location(request.param, f"{request.param}://{root}/{name}", server.storage_options, server.cli_options,
                    server.secret)


@pytest.fixture(params=["memory", "file", "s3", "gs", "az"])
def location(request: pytest.FixtureRequest, tmp_path: Any) -> Location:
    """The storage suite runs once per backend: memory://, file://, and s3://, gs://, az:// on test servers."""
    name = f"ds-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        return Location("memory", f"memory://shardflow-tests/{name}", {}, [])
    if request.param == "file":
        return Location("file", f"file://{tmp_path / name}", {}, [])
    return _object_store(request, name)


@pytest.fixture(params=["file", "s3", "gs", "az"])
def shared_location(request: pytest.FixtureRequest, tmp_path: Any) -> Location:
    """Backends another OS process can see (memory:// lives inside one process); a plain path here."""
    name = f"ds-{uuid.uuid4().hex[:8]}"
    if request.param == "file":
        return Location("file", str(tmp_path / name), {}, [])
    return _object_store(request, name)


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real ``shardflow`` console script."""
    proc = subprocess.run([SHARDFLOW_EXE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"shardflow {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def process_tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tag in the environment of every process the test starts (children inherit it), so that
    its process checks see its own processes only; whatever still runs at the end is killed (a
    stopped one too), so that a failing test leaves nothing behind either."""
    from tests.helpers.processes import kill_tagged

    tag = f"shardflow-test-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("SHARDFLOW_TEST_TAG", tag)
    yield tag
    kill_tagged(tag)
