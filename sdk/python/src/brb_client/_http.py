"""HTTP to the control plane with the standard library: ``http.client`` and ``ssl``.

Redirects are never followed (``http.client`` does not, and nothing here does on its behalf): a
redirect to another host would carry the bearer token there. Certificates are always verified,
against the system's store plus an optional private CA; a client certificate may be presented
for mutual TLS. Plain ``http://`` is refused to hosts other than loopback unless allowed.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

API_PREFIX = "/api/v1"
USER_AGENT = "brb-client-python/0.1.0"


class BrbError(Exception):
    """Base of the SDK's errors."""


class ConfigError(BrbError):
    """A setting the SDK refuses (no URL, a bad scheme, an unreadable CA file...)."""


class Unreachable(BrbError):
    """No answer: connection refused or reset, a timeout, a TLS handshake that failed."""


class ApiError(BrbError):
    """The control plane (or something in front of it) answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: Optional[float] = None,
        location: Optional[str] = None,
    ) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.location = location

    @property
    def is_auth(self) -> bool:
        return self.status in (401, 403)

    @property
    def is_redirect(self) -> bool:
        return 300 <= self.status < 400


class ProtocolError(BrbError):
    """An answer that is not the control plane's API (a proxy page, garbage)."""


@dataclass(frozen=True)
class TlsOptions:
    """How the SDK does TLS. There is no option to skip verification."""

    ca_file: Optional[str] = None
    """A PEM bundle of extra CA certificates to trust (a private CA)."""
    client_cert: Optional[str] = None
    """Client certificate chain (PEM) for mutual TLS, with ``client_key``."""
    client_key: Optional[str] = None
    allow_insecure_http: bool = False
    """Allow ``http://`` to hosts other than loopback (a TLS proxy on a trusted hop)."""


@dataclass(frozen=True)
class Base:
    """One control-plane base URL, split for ``http.client``."""

    url: str
    https: bool
    host: str
    port: int
    path: str  # prefix before /api/v1, without trailing slash


def parse_base(url: str, tls: TlsOptions) -> Base:
    raw = url.strip().rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ConfigError(f"{parts.scheme}://{parts.hostname}: credentials in the URL are not used; give a token")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{url!r}: bad port") from None
    if parts.scheme == "http" and not tls.allow_insecure_http and not _loopback(host):
        raise ConfigError(
            f"{raw!r}: refusing plain HTTP to a host that is not loopback (the token would cross "
            "the network in clear text); use https://, or allow it explicitly "
            "(allow_insecure_http / BRB_INSECURE_HTTP=1) when a TLS proxy on a trusted hop is in front"
        )
    return Base(raw, parts.scheme == "https", host, port, parts.path.rstrip("/"))


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ctx_lock = threading.Lock()
_ctx_cache: Dict[Tuple[Optional[str], Optional[str], Optional[str]], ssl.SSLContext] = {}


def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """One context per distinct TLS setting in the process (a thousand gates share it)."""
    key = (tls.ca_file, tls.client_cert, tls.client_key)
    with _ctx_lock:
        ctx = _ctx_cache.get(key)
        if ctx is not None:
            return ctx
        ctx = ssl.create_default_context()
        if tls.ca_file:
            try:
                ctx.load_verify_locations(cafile=tls.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"CA file {tls.ca_file}: {e}") from None
        if bool(tls.client_cert) != bool(tls.client_key):
            raise ConfigError("a client certificate needs both the certificate and the key")
        if tls.client_cert:
            try:
                ctx.load_cert_chain(tls.client_cert, tls.client_key)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"client certificate {tls.client_cert} / key {tls.client_key}: {e}") from None
        _ctx_cache[key] = ctx
        return ctx


def describe(e: BaseException) -> str:
    """A human sentence for a connection failure, with a hint for the usual TLS mistakes."""
    s = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in s:
        s += (
            " (the server's TLS certificate is not trusted: give the CA that signed it with "
            "ca_file / BRB_CA_FILE)"
        )
    elif "CERTIFICATE_REQUIRED" in s or "certificate required" in s:
        s += " (the server requires a client certificate: client_cert / client_key)"
    return s


def retry_after_secs(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds from now: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            secs = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if secs != secs:  # NaN
        return None
    return max(0.0, min(secs, 3600.0))


def error_from(status: int, headers: Any, body: bytes) -> ApiError:
    """The error an answer with a non-success status stands for."""
    code, message = "http_error", ""
    try:
        doc = json.loads(body)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code", code))[:64]
            message = str(err.get("message", ""))[:300]
    except ValueError:
        pass
    if not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or http.client.responses.get(status, "error")
    return ApiError(
        status,
        code,
        message,
        retry_after=retry_after_secs(headers.get("Retry-After")),
        location=headers.get("Location"),
    )


class Connector:
    """Opens connections to the bases of one gate and sends requests on them."""

    def __init__(
        self,
        bases: "list[Base]",
        token: Optional[str],
        tls: TlsOptions,
        connect_timeout: float,
    ) -> None:
        self.bases = bases
        self._token = token
        self._ctx = ssl_context(tls) if any(b.https for b in bases) else None
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:  # never the token
        return f"Connector(bases={[b.url for b in self.bases]!r}, token={'<redacted>' if self._token else None})"

    def open(self, base: Base, timeout: float) -> http.client.HTTPConnection:
        """Connects (within ``connect_timeout``); later reads time out after ``timeout``."""
        if base.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                base.host, base.port, timeout=self.connect_timeout, context=self._ctx
            )
        else:
            conn = http.client.HTTPConnection(base.host, base.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            conn.close()
            raise
        return conn

    def open_socket(self, base: Base, timeout: float) -> socket.socket:
        """A connected socket (TLS done, within ``connect_timeout``); reads then time out after
        ``timeout``. For event streams, which the SDK reads itself."""
        raw = socket.create_connection((base.host, base.port), timeout=self.connect_timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ctx.wrap_socket(raw, server_hostname=base.host) if base.https and self._ctx else raw
        except BaseException:
            raw.close()
            raise
        sock.settimeout(timeout)
        return sock

    def headers(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        h = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        if extra:
            h.update(extra)
        return h


class Session:
    """One keep-alive connection at a time for plain requests (reports, samples, long-polls),
    to whichever base answers; moves to the next base when one cannot be reached."""

    #: The server drops idle keep-alive connections after its header-read timeout (10 s by
    #: default): reconnect before reusing one that old rather than race it.
    IDLE_REUSE = 8.0

    def __init__(self, connector: Connector, start: int = 0) -> None:
        self._c = connector
        self.index = start % len(connector.bases)
        self._conn: Optional[http.client.HTTPConnection] = None
        self._conn_base: Optional[Base] = None
        # The socket itself, for `abort`: http.client forgets it once an answer says
        # `Connection: close`, while the answer is still being read from it.
        self._sock: Optional[socket.socket] = None
        self._used = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._sock = None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """From another thread: unblocks a request in progress."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """Sends to the current base, then the others in turn until one answers; an answer,
        even an error, is final. Returns the decoded JSON of a 2xx answer."""
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        extra = {"Content-Type": "application/json"} if payload is not None else None
        n = len(self._c.bases)
        last: Optional[BaseException] = None
        with self._lock:
            for i in range(n):
                base = self._c.bases[(self.index + i) % n]
                try:
                    status, headers, data = self._send(base, method, path, payload, extra, timeout)
                except (OSError, http.client.HTTPException) as e:
                    self.close()
                    last = e
                    continue
                self.index = (self.index + i) % n
                if 200 <= status < 300:
                    try:
                        return json.loads(data)
                    except ValueError:
                        raise ProtocolError(
                            f"{base.url}: HTTP {status} with a body that is not JSON: {data[:120]!r}"
                        ) from None
                raise error_from(status, headers, data)
        raise Unreachable(f"{self._c.bases[(self.index + n - 1) % n].url}: {describe(last) if last else 'no URL'}")

    def _send(self, base: Base, method: str, path: str, payload, extra, timeout: float):
        fresh = (
            self._conn is None
            or self._conn_base != base
            or time.monotonic() - self._used >= self.IDLE_REUSE
        )
        if fresh:
            self.close()
            self._conn, self._conn_base = self._c.open(base, timeout), base
            self._sock = self._conn.sock
        try:
            return self._exchange(base, method, path, payload, extra, timeout)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # A reused keep-alive connection the server had just closed: once more, fresh.
            self.close()
            if fresh:
                raise
            self._conn, self._conn_base = self._c.open(base, timeout), base
            self._sock = self._conn.sock
            return self._exchange(base, method, path, payload, extra, timeout)

    def _exchange(self, base: Base, method: str, path: str, payload, extra, timeout: float):
        conn = self._conn
        assert conn is not None
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.request(method, base.path + API_PREFIX + path, body=payload, headers=self._c.headers(extra))
        res = conn.getresponse()
        data = res.read(1 << 20)
        self._used = time.monotonic()
        if res.will_close or not res.isclosed():
            self.close()  # or a body over 1 MiB left half-read
        return res.status, res.headers, data


def read_head(sock: socket.socket, limit: int = 64 * 1024) -> Tuple[int, http.client.HTTPMessage, bytes]:
    """Reads an answer's status line and headers; returns them and the bytes read past them.
    ``Unreachable`` when the peer closes or times out first, ``ProtocolError`` for garbage."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = sock.recv(16384)
        except OSError as e:
            raise Unreachable(f"no answer: {describe(e)}") from None
        if not chunk:
            raise Unreachable("the connection closed before an answer")
        buf += chunk
        if len(buf) > limit:
            raise ProtocolError(f"an answer head larger than {limit} bytes")
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, _, fields = head.partition(b"\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP answer: {status_line[:60]!r}")
    headers = http.client.parse_headers(io.BytesIO(fields + b"\r\n\r\n"))
    return int(parts[1]), headers, rest


def read_some_body(sock: socket.socket, headers: Any, rest: bytes, limit: int = 4096) -> bytes:
    """Up to ``limit`` bytes of an (error) answer's body, for its message."""
    body = rest
    length = headers.get("Content-Length", "")
    want = min(int(length), limit) if length.strip().isdigit() else limit
    while len(body) < want:
        try:
            chunk = sock.recv(want - len(body))
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        from ._hub import Dechunker  # noqa: PLC0415 - only for this rare path
        from ._sse import SseError  # noqa: PLC0415

        try:
            body = Dechunker().feed(body)
        except SseError:
            pass
    return body[:limit]


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
