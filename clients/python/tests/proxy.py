"""A small HTTP proxy put between the client and a real `docledger serve` to inject the
faults a client must survive: a 503 answered in the server's stead, a request forwarded
(so the server applies it) whose answer never reaches the client, an answer delayed past
the client's timeout, a batch answer cut after some lines, a batch line rewritten to 503.

Faults are queued with `fail(...)` and taken by the next matching requests; every request
is recorded (method, path, headers, body) for the tests to inspect.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """What to do with one matching request.

    kind: `unavailable` (answer `status`, 503 by default, without forwarding), `drop`
    (forward, then close without answering), `delay` (forward, wait `seconds`, then
    answer), `cut_after` (forward, relay the first `lines` answer lines, then cut the
    connection), `line_unavailable` (forward, then answer with line `lines` rewritten to a
    503 error). `after_forward` runs once the server has answered, before the fault.
    """

    kind: str
    path_contains: str = ""
    method: str | None = None
    seconds: float = 0.0
    lines: int = 0
    retry_after: str | None = "0"
    status: int = 503
    after_forward: Callable[[], None] | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.path_contains in path


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fault: str | None


@dataclass
class FaultProxy:
    upstream_port: int
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def fail(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for i, f in enumerate(self.faults):
                if f.matches(method, path):
                    return self.faults.pop(i)
        return None

    def requests(self, path_contains: str = "", method: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.seen
                if path_contains in s.path and (method is None or s.method == method)
            ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


def start_proxy(upstream_port: int) -> tuple[FaultProxy, Callable[[], None]]:
    """Starts a proxy to 127.0.0.1:`upstream_port`; returns it and its stop function."""
    proxy = FaultProxy(upstream_port)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            body = _read_body(self)
            fault = proxy.take(self.command, self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with proxy.lock:
                proxy.seen.append(
                    Seen(self.command, self.path, headers, body, fault.kind if fault else None)
                )
            if fault is not None and fault.kind == "unavailable":
                payload = json.dumps(
                    {"error": {"code": "unavailable", "message": "injected by the test proxy"}}
                ).encode()
                self.send_response(fault.status)
                if fault.retry_after is not None:
                    self.send_header("Retry-After", fault.retry_after)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True
                return
            forward = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "host")
            }
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=600)
            upstream.request(self.command, self.path, body=body, headers=forward)
            answer = upstream.getresponse()
            data = answer.read()
            upstream.close()
            if fault is not None and fault.after_forward is not None:
                fault.after_forward()
            self.close_connection = True
            if fault is not None and fault.kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "line_unavailable":
                lines = data.splitlines(keepends=True)
                n = fault.lines
                error = {"code": "unavailable", "message": "injected by the test proxy"}
                lines[n - 1] = (
                    json.dumps({"line": n, "status": 503, "error": error}).encode() + b"\n"
                )
                data = b"".join(lines)
            self.send_response(answer.status)
            for k, v in answer.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(k, v)
            if fault is not None and fault.kind == "cut_after":
                kept = b"".join(data.splitlines(keepends=True)[: fault.lines])
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                if kept:
                    self.wfile.write(f"{len(kept):x}\r\n".encode() + kept + b"\r\n")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_header("content-length", str(len(data)))
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(data)

        do_GET = _handle
        do_PUT = _handle
        do_POST = _handle
        do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return proxy, stop
