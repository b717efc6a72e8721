"""Fixtures: a real ``brb server`` on a loopback port, and small misbehaving servers of our own.

The real server is the repository's ``target/debug/brb`` (``make test`` builds it first), or
``$BRB_BIN``. Nothing here is a mock of the control plane: the bad servers stand for what can
sit between a worker and it (a broken proxy, a hostile host), and the gate is tested against
both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]


def brb_bin() -> str:
    explicit = os.environ.get("BRB_BIN")
    if explicit:
        return explicit
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    path = target / "debug" / "brb"
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: run `cargo build -p brb` first (make test does)")
    return str(path)


def wait_until(cond: Callable[[], bool], timeout: float, every: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


class BrbServer:
    """A real ``brb server`` child process with its own data dir."""

    def __init__(self, data_dir: str, listen: str = "127.0.0.1:0") -> None:
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir, "server.log")
        env = dict(os.environ)
        for k in ("BRB_ADMIN_TOKEN", "BRB_CONFIG", "BRB_TOKEN", "BRB_TOKEN_FILE", "BRB_URL"):
            env.pop(k, None)
        env.update(
            BRB_LOG="info",
            BRB_CHANGES_PER_SEC="100000",
            BRB_CHANGES_BURST="100000",
            BRB_AUTH_FAILURES_BURST="100000",
        )
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [brb_bin(), "server", "--listen", listen, "--data-dir", data_dir],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.url = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError(f"brb server did not start; its log:\n{Path(self.log_path).read_text()}")
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.admin = Path(data_dir, "admin-token").read_text().strip()

    def api(self, method: str, path: str, body: Optional[dict] = None, token: Optional[str] = None) -> dict:
        req = urllib.request.Request(
            self.url + "/api/v1" + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {token or self.admin}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as res:
            return json.load(res)

    def set_state(self, state: str, switch: str = "workers", ramp: Optional[dict] = None) -> dict:
        body: Dict[str, object] = {"state": state, "reason": "pytest"}
        if ramp is not None:
            body["ramp"] = ramp
        return self.api("PUT", f"/switches/{switch}/state", body)

    def viewer_token(self, name: str = "pytest-worker") -> str:
        return self.api("POST", "/tokens", {"name": name, "role": "viewer"})["secret"]

    def workers(self, switch: str = "workers") -> dict:
        return self.api("GET", f"/switches/{switch}/workers")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def brb() -> Iterator[BrbServer]:
    with tempfile.TemporaryDirectory(prefix="brb-py-") as d:
        server = BrbServer(d)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def token(brb: BrbServer) -> str:
    return brb.viewer_token()


@dataclass
class Seen:
    at: float
    method: str
    target: str
    headers: Dict[str, str]


@dataclass
class BadServer:
    """A loopback TCP server that reads each request's head and hands the connection to
    ``respond(conn, seen)``; records every request it saw."""

    respond: Callable[[socket.socket, Seen], None]
    seen: List[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.closed = threading.Event()
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            method, target = head[0].split(" ")[:2]
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            seen = Seen(time.monotonic(), method, target, headers)
            self.seen.append(seen)
            self.respond(conn, seen)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def count(self, pred: Callable[[Seen], bool] = lambda s: True) -> int:
        return sum(1 for s in list(self.seen) if pred(s))

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def bad_server() -> Iterator[Callable[[Callable[[socket.socket, Seen], None]], BadServer]]:
    made: List[BadServer] = []

    def make(respond: Callable[[socket.socket, Seen], None]) -> BadServer:
        s = BadServer(respond)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def switch_json(state: str = "running", version: int = 1, name: str = "workers", **extra: object) -> str:
    doc = {
        "name": name,
        "description": "",
        "primary": True,
        "state": state,
        "version": version,
        "changed_at": "2026-01-01T00:00:00Z",
        "changed_by": "admin",
        "source": "api",
        "reason": None,
        "ramp": None,
    }
    doc.update(extra)
    return json.dumps(doc)


def sse_head(status: str = "200 OK", ctype: str = "text/event-stream") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n".encode()


def http_answer(status: str, body: str, ctype: str = "application/json", extra: str = "") -> bytes:
    data = body.encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n".encode()
        + data
    )
