"""One thread that reads every open event stream of the process.

A gate's watcher thread opens its stream (connect, TLS, request, answer head: blocking, with
timeouts) and then hands the socket to the hub and waits. The hub holds all of them in one
``selectors`` loop: when a change is pushed to a thousand gates of one process, one thread
reads and applies the thousand deliveries in turn, instead of a thousand threads waking at once
and queueing for the interpreter lock (measured: p99 several times lower, BENCHMARKS.md). It also
ends streams that stay silent past their idle timeout.

Nothing here knows the protocol: a stream's ``consumer`` gets the (de-chunked) bytes and says
when the stream is over.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional

from ._sse import Memo, SseError

log = logging.getLogger("brb_client")


class Dechunker:
    """Incremental ``Transfer-Encoding: chunked`` decoding. ``ended`` once the last chunk came."""

    MAX_SIZE_LINE = 1024

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state = "size"  # size | data | crlf | done
        self.ended = False
        # Whether the last feed was exactly one whole chunk (the fast path below).
        self.last_whole = False

    def idle(self) -> bool:
        """Between chunks with nothing buffered: the next byte starts a chunk-size line."""
        return not self._buf and self._state == "size" and not self.ended

    def feed(self, data: bytes) -> bytes:
        self.last_whole = False
        if not self._buf and self._state == "size" and not self.ended:
            # The usual case: whole chunks in one read. Sliced without copying into a buffer.
            i = data.find(b"\r\n")
            if 0 < i <= 16:
                try:
                    n = int(data[:i].split(b";", 1)[0], 16)
                except ValueError:
                    n = -1
                if n > 0 and len(data) == i + 2 + n + 2 and data.endswith(b"\r\n"):
                    self.last_whole = True
                    return data[i + 2 : i + 2 + n]
        buf = self._buf
        buf += data
        out = bytearray()
        while not self.ended:
            if self._state == "size":
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > self.MAX_SIZE_LINE:
                        raise SseError("a chunk size line that never ends")
                    break
                line = bytes(buf[:i]).split(b";", 1)[0].strip()
                try:
                    n = int(line, 16)
                except ValueError:
                    raise SseError(f"a chunk size that is not hexadecimal: {line[:20]!r}") from None
                if n < 0:
                    raise SseError("a negative chunk size")
                del buf[: i + 2]
                if n == 0:
                    self.ended = True
                    break
                self._left, self._state = n, "data"
            elif self._state == "data":
                take = min(self._left, len(buf))
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if self._left:
                    break
                self._state = "crlf"
            else:  # crlf after a chunk's data
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise SseError("a chunk not followed by CRLF")
                del buf[:2]
                self._state = "size"
        return bytes(out)


class Stream:
    """An open event stream handed to the hub.

    ``consumer(data)`` gets each piece of the body and returns a result to end the stream, or
    None to go on; ``on_end(reason, error)`` gives the result when the stream ends otherwise
    (``eof``, ``silent``, ``error``)."""

    def __init__(
        self,
        sock: socket.socket,
        leftover: bytes,
        chunked: bool,
        idle_timeout: float,
        consumer: Callable[[bytes], Any],
        on_end: Callable[[str, Optional[BaseException]], Any],
    ) -> None:
        self.sock = sock
        self.leftover = leftover
        self.dechunker = Dechunker() if chunked else None
        self.idle_timeout = idle_timeout
        self.consumer = consumer
        self.on_end = on_end
        self.last = time.monotonic()
        self.fd = -1
        self.tls = isinstance(sock, ssl.SSLSocket)
        # `done.is_set()` as a plain read for the reader's per-delivery path.
        self.finished = False
        self.done = threading.Event()
        self.result: Any = None


class Hub:
    """The process's stream reader (one per process; made again after a fork)."""

    _lock = threading.Lock()
    _instance: Optional["Hub"] = None

    @classmethod
    def get(cls) -> "Hub":
        with cls._lock:
            hub = cls._instance
            if hub is None or hub._pid != os.getpid():
                hub = cls._instance = Hub()
            return hub

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: Deque[Stream] = deque()
        self._streams: Dict[int, Stream] = {}
        # Decoding shared by the streams' consumers, which run on this hub's thread only.
        self.memo = Memo()
        # The last whole chunk read (size line, frame, CRLF) and its frame: a press reaches the
        # streams of a process with the same bytes, so the others skip the de-chunking and hand
        # on the same frame object (the memo then compares by identity first).
        self._raw: Optional[bytes] = None
        self._frame = b""
        # When the current batch of ready streams was polled: their bytes came then.
        self._now = time.monotonic()
        threading.Thread(target=self._run, name="brb-streams", daemon=True).start()

    def attach(self, s: Stream) -> None:
        self._incoming.append(s)
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def _run(self) -> None:
        next_sweep = time.monotonic() + 0.25
        while True:
            try:
                ready = self._sel.select(0.25)
                self._now = time.monotonic()
                for key, _ in ready:
                    if key.data is None:
                        self._take_incoming()
                    else:
                        self._readable(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 0.25
                    for s in list(self._streams.values()):
                        if now - s.last >= s.idle_timeout:
                            self._finish(s, s.on_end("silent", None))
            except Exception:  # noqa: BLE001 - the reader of every stream must not die
                log.exception("brb_client: unexpected error in the stream reader")

    def _take_incoming(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._incoming:
            s = self._incoming.popleft()
            try:
                self._sel.register(s.sock, selectors.EVENT_READ, s)
            except (OSError, ValueError) as e:  # closed meanwhile (the gate stopped)
                s.result = s.on_end("error", e)
                s.finished = True
                s.done.set()
                continue
            s.fd = s.sock.fileno()
            self._streams[s.fd] = s
            if s.leftover:
                data, s.leftover = s.leftover, b""
                if self._feed(s, data):
                    continue
            # TLS may hold decrypted bytes the socket will not signal again.
            self._readable(s)

    def _readable(self, s: Stream) -> None:
        while not s.finished:
            try:
                data = s.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as e:
                self._finish(s, s.on_end("error", e))
                return
            if not data:
                self._finish(s, s.on_end("eof", None))
                return
            if self._feed(s, data):
                return
            # One read per readiness unless more is surely there: the selector is level-
            # triggered and says again if the socket has more; TLS may hold decrypted bytes
            # it would not signal.
            if len(data) < 65536 and not (s.tls and s.sock.pending()):
                return

    def _feed(self, s: Stream, data: bytes) -> bool:
        """True when the stream ended."""
        s.last = self._now
        try:
            d = s.dechunker
            if d is not None:
                if data == self._raw and d.idle():
                    data = self._frame
                else:
                    frame = d.feed(data)
                    if d.last_whole:
                        self._raw, self._frame = data, frame
                    data = frame
            result = s.consumer(data) if data else None
            if result is None and s.dechunker is not None and s.dechunker.ended:
                result = s.on_end("eof", None)
        except SseError as e:
            result = s.on_end("error", e)
        except Exception as e:  # noqa: BLE001 - one broken stream must not end the others
            log.exception("brb_client: unexpected error reading a stream")
            result = s.on_end("error", e)
        if result is not None:
            self._finish(s, result)
            return True
        return False

    def _finish(self, s: Stream, result: Any) -> None:
        if s.done.is_set():
            return
        try:
            self._sel.unregister(s.sock)
        except (KeyError, ValueError, OSError):
            pass
        if self._streams.get(s.fd) is s:
            del self._streams[s.fd]
        s.result = result
        s.finished = True
        s.done.set()
