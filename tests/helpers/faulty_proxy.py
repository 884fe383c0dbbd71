"""A fault-injecting HTTP proxy to put in front of the S3 test server.

Clients use the proxy's address as their ``endpoint_url``; every request is forwarded to the
real server (moto) unless a fault is drawn for it. Random faults, drawn from a seeded
:class:`random.Random` in the order requests arrive:

- ``slowdown``: answered ``503 SlowDown`` without forwarding (what S3 says when throttling);
- ``error``: answered ``500 InternalError`` without forwarding;
- ``reset``: the connection is reset (RST) before any reply, without forwarding;
- ``latency``: forwarded after a pause of ``latency_s`` seconds.

Rules (:meth:`FaultyProxy.add_rule`) act on chosen requests before the random draw, e.g.
``drop_reply`` (forward, read the server's reply, then reset the client's connection: the
server acted and the client never heard) on exactly one exclusive PUT of a manifest, or
``stall`` (hold the request unforwarded until the proxy stops) on upload parts.
:attr:`FaultyProxy.injected` counts what was done, so a test can assert that faults really
happened (a test through a proxy that injected nothing proves nothing).
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Faults", "FaultyProxy", "Request", "Rule", "exclusive_put"]

ACTIONS = ("slowdown", "error", "reset", "latency", "drop_reply", "stall")
# Not forwarded: per-connection headers, and Expect (this proxy has read the whole body already).
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}
_ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
               '<RequestId>faulty-proxy</RequestId></Error>')


@dataclass(frozen=True)
class Faults:
    """Shares of requests that get each random fault (each in [0, 1], drawn independently in this order)."""

    slowdown: float = 0.0
    error: float = 0.0
    reset: float = 0.0
    latency: float = 0.0
    latency_s: float = 0.3

    def __post_init__(self) -> None:
        for name in ("slowdown", "error", "reset", "latency"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Invalid value for `{name}`: {getattr(self, name)}. Expected a share in [0, 1].")


@dataclass(frozen=True)
class Request:
    """What a rule sees of a request: method, path with query, headers (names lower-cased), and
    its arrival number at the proxy (1, 2, ...)."""

    method: str
    path: str
    headers: Mapping[str, str]
    number: int = 0


@dataclass
class Rule:
    """Do ``action`` to requests ``match`` accepts, at most ``times`` times (None: always)."""

    match: Callable[[Request], bool]
    action: str
    times: int | None = 1
    hits: int = 0
    seen: list[Request] = field(default_factory=list)  # the requests it acted on


def exclusive_put(path_pattern: str) -> Callable[[Request], bool]:
    """Match a conditional create (``PUT`` with ``If-None-Match: *``) whose path matches ``path_pattern``."""
    pattern = re.compile(path_pattern)
    return lambda r: r.method == "PUT" and r.headers.get("if-none-match") == "*" and bool(pattern.search(r.path))


class FaultyProxy:
    """A threaded HTTP proxy in front of ``upstream`` (``http://host:port``) that misbehaves on purpose.

    Example:
        >>> with FaultyProxy(server.endpoint, faults=Faults(slowdown=0.1), seed=3) as proxy:  # doctest: +SKIP
        ...     run_cli("data", "synth", ..., "-o", f"endpoint_url={proxy.endpoint}")
        ...     assert proxy.injected["slowdown"] > 0
    """

    def __init__(self, upstream: str, *, faults: Faults = Faults(), seed: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"Invalid value for `upstream`: {upstream!r}. Expected http://host:port.")
        self.upstream = (parts.hostname, parts.port)
        self.faults = faults
        self.seed = seed
        self.injected: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_rule(self, match: Callable[[Request], bool], action: str, *, times: int | None = 1) -> Rule:
        """Do ``action`` (one of :data:`ACTIONS`) to the next ``times`` requests ``match`` accepts."""
        if action not in ACTIONS:
            raise ValueError(f"Invalid value for `action`: {action!r}. Expected one of {ACTIONS}.")
        rule = Rule(match, action, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def each_fault_once(self, *, spacing: int = 10) -> None:
        """Inject each random fault kind once for certain, on requests ``spacing`` apart from now
        on (far enough apart to hit different calls' retries): a short run may otherwise draw
        none of a kind."""
        first = self.requests + spacing // 2
        for i, action in enumerate(("slowdown", "error", "reset", "latency")):
            self.add_rule(lambda r, n=first + i * spacing: r.number == n, action)

    def set_faults(self, faults: Faults) -> None:
        """Change the random fault rates from now on (e.g. ``Faults()`` to stop misbehaving)."""
        self.faults = faults

    def decide(self, request: Request) -> str | None:
        """The fault for this request: the first live rule that matches it, else a random draw."""
        with self._lock:
            self.requests += 1
            request = dataclasses.replace(request, number=self.requests)
            for rule in self._rules:
                if (rule.times is None or rule.hits < rule.times) and rule.match(request):
                    rule.hits += 1
                    rule.seen.append(request)
                    self.injected[rule.action] += 1
                    return rule.action
            for action in ("slowdown", "error", "reset", "latency"):
                if self._random.random() < getattr(self.faults, action):
                    self.injected[action] += 1
                    return action
        return None

    def start(self) -> FaultyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()  # stalled requests end (unanswered)
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_body(rfile: Any, headers: Mapping[str, str]) -> bytes:
    """The request body, by Content-Length or de-chunked from Transfer-Encoding: chunked."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(rfile.read(size))
            rfile.readline()
    length = int(headers.get("content-length") or 0)
    return rfile.read(length) if length else b""


def _handler_for(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients' connection pools expect
        _upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
            pass

        def finish(self) -> None:  # the client's connection is done: so is ours to the server
            super().finish()
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None

        def _reset(self) -> None:
            """Close the client's connection with a TCP reset, as a crashed server or a load balancer does."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _reply_error(self, status: int, code: str, message: str) -> None:
            body = _ERROR_BODY.format(code=code, message=message).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            if body or "content-length" in {k.lower() for k, _ in headers}:
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(body))))
            for attempt in (1, 2):  # a pooled upstream connection the server closed: reconnect once
                if self._upstream is None:
                    self._upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self._upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in headers:
                        self._upstream.putheader(k, v)
                    self._upstream.endheaders(body or None)
                    response = self._upstream.getresponse()
                    data = response.read()
                    return response.status, response.reason, response.getheaders(), data
                except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                    self._upstream.close()
                    self._upstream = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        def _handle(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = _read_body(self.rfile, headers)
            action = proxy.decide(Request(self.command, self.path, headers))
            if action == "reset":
                return self._reset()
            if action == "slowdown":
                return self._reply_error(503, "SlowDown", "Please reduce your request rate.")
            if action == "error":
                return self._reply_error(500, "InternalError", "We encountered an internal error. Please try again.")
            if action == "stall":
                while not proxy._stopped.wait(0.1):
                    pass
                return self._reset()
            if action == "latency":
                time.sleep(proxy.faults.latency_s)
            status, reason, reply_headers, data = self._forward(body)
            if action == "drop_reply":  # the server acted; the client never hears of it
                return self._reset()
            self.send_response_only(status, reason)
            no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
            for k, v in reply_headers:
                if k.lower() in _HOP_BY_HOP or (k.lower() == "content-length" and not no_body):
                    continue
                self.send_header(k, v)
            if not no_body:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not no_body:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
