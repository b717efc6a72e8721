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
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = False
        buf = self._buf
        buf += chunk
        # Everything up to the last line end is complete: split it in one go (a delivery to a
        # thousand gates of one process runs this a thousand times).
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if end < 0:
            if len(buf) > MAX_LINE:
                raise SseError(f"a line longer than {MAX_LINE} bytes")
            return out
        done = bytes(buf[: end + 1])
        del buf[: end + 1]
        if len(buf) > MAX_LINE:
            raise SseError(f"a line longer than {MAX_LINE} bytes")
        if done.endswith(b"\r") and not buf:
            self._after_cr = True  # the LF of a CRLF may come with the next chunk
        if b"\r" in done:
            done = done.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        try:
            text = done.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SseError(f"a line that is not UTF-8: {e}") from None
        lines = text.split("\n")
        lines.pop()  # the empty string after the last line end
        if len(done) > MAX_LINE and any(len(line) > MAX_LINE for line in lines):
            raise SseError(f"a line longer than {MAX_LINE} bytes")
        for line in lines:
            # The field rules of the standard, inline: this is the per-delivery path.
            if not line:
                if self._data or self._event:
                    out.append(Event(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data, self._size = "", [], 0
                continue
            if line[0] == ":":
                continue  # a comment: the server's keep-alive
            field, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._size += len(value) + 1
                if self._size > MAX_EVENT:
                    raise SseError(f"an event larger than {MAX_EVENT} bytes")
                self._data.append(value)
            elif field == "event":
                self._event = value
            elif field == "id":
                if "\0" not in value:
                    self._id = value
            # `retry:` and unknown fields are ignored, as the standard says.
        return out
