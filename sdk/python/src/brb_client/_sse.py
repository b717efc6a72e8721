"""An incremental Server-Sent Events parser: bytes in, events out, no I/O.

It follows the WHATWG event-stream rules the control plane's streams use (``event:``, ``data:``,
``id:``, comments for keep-alives; lines end in LF, CRLF or CR) and bounds what it buffers, so
a hostile or broken peer cannot make a worker grow without limit: a line longer than
``MAX_LINE`` or an event larger than ``MAX_EVENT`` is a :class:`SseError`, and the caller drops
the connection. An event cut off by the end of the connection is never dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

#: Longest line accepted (a switch event is well under 2 KiB).
MAX_LINE = 64 * 1024
#: Largest event accepted (all its data lines together).
MAX_EVENT = 256 * 1024


class SseError(Exception):
    """The bytes are not an event stream this client will read."""


@dataclass
class Event:
    event: str
    data: str
    id: Optional[str] = None


class Parser:
    """Feed it bytes as they arrive; it returns the events they completed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._event = ""
        self._data: List[str] = []
        self._size = 0
        self._id: Optional[str] = None
        # A CR at the end of one chunk may be the first half of a CRLF split across chunks.
        self._after_cr = False

    def feed(self, chunk: bytes) -> List[Event]:
        out: List[Event] = []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = False
        self._buf += chunk
        start = 0
        buf = self._buf
        n = len(buf)
        while start < n:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                end = cr
                if cr + 1 < n:
                    nxt = cr + 2 if buf[cr + 1] == 0x0A else cr + 1
                else:
                    self._after_cr = True
                    nxt = cr + 1
            else:
                end = lf
                nxt = lf + 1
            self._line(bytes(buf[start:end]), out)
            start = nxt
        del buf[:start]
        if len(buf) > MAX_LINE:
            raise SseError(f"a line longer than {MAX_LINE} bytes")
        return out

    def _line(self, raw: bytes, out: List[Event]) -> None:
        if len(raw) > MAX_LINE:
            raise SseError(f"a line longer than {MAX_LINE} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SseError(f"a line that is not UTF-8: {e}") from None
        if line == "":
            if self._data or self._event:
                out.append(Event(self._event or "message", "\n".join(self._data), self._id))
            self._event, self._data, self._size = "", [], 0
            return
        if line.startswith(":"):
            return  # a comment: the server's keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._size += len(value) + 1
            if self._size > MAX_EVENT:
                raise SseError(f"an event larger than {MAX_EVENT} bytes")
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._id = value
        # `retry:` and unknown fields are ignored, as the standard says.
