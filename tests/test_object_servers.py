"""The gs:// and az:// test servers themselves, and what only those backends can get wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from shardflow.children import alive

from .conftest import run_cli
from .object_servers import AZURITE_KEY, AzureServer


def test_the_servers_die_with_a_sigkilled_test_session() -> None:
    script = os.path.join(os.path.dirname(__file__), "helpers", "object_servers_child.py")
    session = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = session.stdout.readline()
        assert line, session.stderr.read()
        pids = json.loads(line)
        assert all(alive(pid) for pid in pids)
    finally:
        session.send_signal(signal.SIGKILL)
        session.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "a server outlived the session that started it"


def test_an_azure_error_is_one_line_without_the_key(azure_server: AzureServer) -> None:
    wrong_key = azure_server.connection_string.replace(AZURITE_KEY, AZURITE_KEY[:-8] + "AAAAAA==")
    proc = run_cli("data", "inspect", f"az://{azure_server.container}/ds", "-o", f"connection_string={wrong_key}",
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "az://shardflow-test/ds" in proc.stderr, proc.stderr
    assert "AuthorizationFailure" in proc.stderr and "<Error>" not in proc.stderr
    assert AZURITE_KEY[:-8] not in proc.stdout + proc.stderr
