"""An incremental Server-Sent Events parser: bytes in, events out, no I/O.

It follows the WHATWG event-stream rules the control plane's streams use (``event:``, ``data:``,
``id:``, comments for keep-alives; lines end in LF, CRLF or CR) and bounds what it buffers, so
a hostile or broken peer cannot make a worker grow without limit: a line longer than
``MAX_LINE`` or an event larger than ``MAX_EVENT`` is a :class:`SseError`, and the caller drops
the connection. An event cut off by the end of the connection is never dispatched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

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

    def idle(self) -> bool:
        """Nothing buffered, no event half-read: the next byte starts a line of a new event."""
        return not self._buf and not self._after_cr and not self._data and not self._event

    def resume(self, last_id: Optional[str]) -> None:
        """What feeding a :class:`Memo`'s frame does to an idle parser: the id it set."""
        if last_id is not None:
            self._id = last_id

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


class Memo:
    """The decoding of the last frame, shared by the parsers of a process (the stream reader's
    thread only). The gates of one process on one switch receive the same bytes for each
    change: the first decodes them, the others compare bytes. A frame is remembered only when
    decoding it does not depend on what came before: read by an idle parser, leaving it idle,
    every event carrying an id the frame itself set. Anything else is decoded as usual."""

    def __init__(self) -> None:
        self._bytes: Optional[bytes] = None
        self._events: List[Event] = []
        self._id: Optional[str] = None
        self._data: Optional[str] = None
        self._decoded: Any = None

    def feed(self, parser: Parser, chunk: bytes) -> List[Event]:
        """The events of ``chunk`` for ``parser``, as ``parser.feed(chunk)`` returns them (the
        caller must not change them: other parsers get the same objects)."""
        # Parser.idle() inline: this runs for every delivery to every gate.
        if parser._buf or parser._after_cr or parser._data or parser._event:
            return parser.feed(chunk)
        if chunk is self._bytes or chunk == self._bytes:
            parser.resume(self._id)
            return self._events
        fresh = Parser()
        events = fresh.feed(chunk)
        if not fresh.idle() or any(e.id is None for e in events):
            return parser.feed(chunk)  # an event's id came earlier: this parser's own
        self._bytes, self._events, self._id = bytes(chunk), events, fresh._id
        parser.resume(fresh._id)
        return events

    def decoded(self, data: str, decode: Callable[[str], Any]) -> Any:
        """``decode(data)``, remembered for the next equal ``data``; an exception is not."""
        if data is self._data or data == self._data:
            return self._decoded
        value = decode(data)
        self._data, self._decoded = data, value
        return value
