"""Fault injection for tests/test_faults.py: an S3 proxy that fails requests, and the
processes of a Ray cluster this test process (or a driver it started) owns.

`FaultProxy` is a threaded HTTP proxy on 127.0.0.1 in front of an S3 endpoint (the moto
server). It forwards every request unchanged and answers, at set rates, with the
transient faults a real S3 produces under load:

- ``slowdown``: HTTP 503 with S3's XML error body (``<Code>SlowDown</Code>``), the
  request never reaching the store;
- ``reset``: the connection reset (TCP RST) before the request is forwarded;
- ``lost``: the request forwarded and applied by the store, then the connection reset
  instead of the response, so the client retries a request that already took effect
  (a PUT that landed, a create-once PUT that now finds its own object).

Which request fails is a function of the seed and the request alone (method, path and
query, Range header, and how many times that same request was seen before), not of the
order in which concurrent clients' requests arrive. The same request is never failed
more than ``max_in_a_row`` times in a row, so a client that retries (botocore does, up
to 4 times) always gets through: the faults are transient, as S3's are. ``first``
names requests that must meet a fault whatever the draw: {fault: regex}, the first
request whose 'METHOD path?query' matches gets that fault (so a short run still meets
every kind where it matters, e.g. a commit PUT whose response is lost).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

FAULTS = ("slowdown", "reset", "lost")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "content-length"}
SLOWDOWN_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 '<Message>Please reduce your request rate.</Message><RequestId>{n}</RequestId>'
                 '<HostId>raywarp-fault-proxy</HostId></Error>')


class FaultProxy:
    """``with FaultProxy(upstream, seed=1, rates={'slowdown': .05, ...}) as proxy:`` then
    use ``proxy.url`` as the S3 endpoint; ``proxy.counts`` says what happened
    (``forwarded`` and one count per fault)."""

    def __init__(self, upstream: str, seed: int = 0, rates: dict[str, float] | None = None, max_in_a_row: int = 2,
                 first: dict[str, str] | None = None):
        unknown = (set(rates or {}) | set(first or {})) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.upstream = urlsplit(upstream)
        self.seed, self.rates, self.max_in_a_row = seed, dict(rates or {}), max_in_a_row
        self._first = {kind: re.compile(pattern) for kind, pattern in (first or {}).items()}
        self.counts = dict.fromkeys(("forwarded", *FAULTS), 0)
        self.faults: list[tuple[str, str, str]] = []  # (fault, method, path) of every fault injected
        self._seen: dict[str, int] = {}  # request → times seen
        self._in_a_row: dict[str, int] = {}  # request → faults in a row
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def decide(self, method: str, target: str, range_header: str | None) -> str | None:
        """The fault for this request, or None to forward it."""
        request = f"{method} {target} {range_header or ''}"
        with self._lock:
            n = self._seen.get(request, 0)
            self._seen[request] = n + 1
            draw = int.from_bytes(hashlib.sha256(f"{self.seed}|{request}|{n}".encode()).digest()[:8], "big") / 2**64
            fault, edge = None, 0.0
            for kind in FAULTS:
                edge += self.rates.get(kind, 0.0)
                if draw < edge:
                    fault = kind
                    break
            if fault and self._in_a_row.get(request, 0) >= self.max_in_a_row:
                fault = None
            if fault is None and not self._in_a_row.get(request):
                for kind, pattern in list(self._first.items()):
                    if pattern.search(f"{method} {target}"):
                        fault = kind
                        del self._first[kind]
                        break
            self._in_a_row[request] = self._in_a_row.get(request, 0) + 1 if fault else 0
            self.counts[fault or "forwarded"] += 1
            if fault:
                self.faults.append((fault, method, target))
            return fault

    def injected(self) -> int:
        return sum(self.counts[k] for k in FAULTS)


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes | None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = self.headers.get("Content-Length")
            return self.rfile.read(int(length)) if length is not None else None

        def _reset(self) -> None:
            """Drop the connection with a TCP RST, no response."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
            lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()

        def _handle(self) -> None:
            body = self._body()
            fault = proxy.decide(self.command, self.path, self.headers.get("Range"))
            if fault == "reset":
                return self._reset()
            if fault == "slowdown":
                xml = SLOWDOWN_BODY.format(n=proxy.counts["slowdown"]).encode()
                return self._send(503, "Slow Down", [("Content-Type", "application/xml"),
                                                     ("Content-Length", str(len(xml)))], xml)
            upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in _HOP_BY_HOP:
                        upstream.putheader(k, v)
                if body is not None:
                    upstream.putheader("Content-Length", str(len(body)))
                upstream.endheaders(body)
                response = upstream.getresponse()
                data = response.read()
                headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                length = response.getheader("Content-Length")
            finally:
                upstream.close()
            if fault == "lost":  # the store applied it; the client never hears
                return self._reset()
            if self.command == "HEAD" or response.status in (204, 304):
                if length is not None:
                    headers.append(("Content-Length", length))
            else:
                headers.append(("Content-Length", str(len(data))))
            self._send(response.status, response.reason, headers, data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


# -- processes ---------------------------------------------------------------------------


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[1]), int(fields[19])) if fields[0] != "Z" else None


def title(pid: int) -> str:
    """A process's argv[0]: Ray sets it to 'ray::Class.method' or 'ray::task' while it runs one."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live process below `root` (not `root` itself). Ray's
    worker processes are children of their node's raylet, itself a child of the process
    that started the node: so these are the processes of clusters `root` started, and
    never another user's on the same machine."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat:
                children.setdefault(stat[0], []).append(int(entry))
                starts[int(entry)] = stat[1]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def find_process(root: int, prefix: str, timeout: float, poll: float = 0.005, stop=lambda: False,
                 exclude=()) -> int | None:
    """The pid of a process below `root` whose title starts with `prefix` (not one of
    `exclude`), waiting up to `timeout` s (or until `stop()` is true); None if none appeared.
    Titles are read every `poll` s, the process tree every 0.1 s (a new worker process
    takes longer than that to start a task)."""
    deadline = time.monotonic() + timeout
    listed = 0.0
    while time.monotonic() < deadline and not stop():
        if time.monotonic() - listed > 0.1:
            pids, listed = [pid for pid in descendants(root) if pid not in exclude], time.monotonic()
        for pid in pids:
            if title(pid).startswith(prefix):
                return pid
        time.sleep(poll)
    return None


def kill_all(processes: dict[int, int], sig: int = 9) -> None:
    """Send `sig` to each of `processes` ({pid: start time}) still alive as that same process."""
    for pid, start in processes.items():
        stat = _stat(str(pid))
        if stat and stat[1] == start:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def wait_gone(processes: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait until none of `processes` is alive; those left after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid: start for pid, start in processes.items() if (_stat(str(pid)) or (0, None))[1] == start}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
