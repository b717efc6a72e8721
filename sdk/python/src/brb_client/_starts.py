"""Start notes: how a job framework's child process tells the worker's main process that a job
it was handed has begun.

The gate acknowledges a pause only after every job the worker had already handed on has begun
(``Gate.try_job(starting=True)``); in Celery's prefork pool and RQ's forking worker the job
begins in another process, so that process writes the job's id, one line, to a pipe the main
process made before forking, and a reader thread in the main process marks the job started.
In the main process itself (RQ's ``SimpleWorker``, Celery's ``solo`` and ``threads`` pools) the
note is direct. A note that cannot be written at once (a full pipe) is dropped: the gate then
waits ``start_wait`` at most, it never hangs a job.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Callable, Optional

log = logging.getLogger("brb_client")

#: Longest id written as a note (a pipe write up to PIPE_BUF bytes is atomic).
MAX_KEY = 512


class StartNotes:
    """A pipe from child processes to the process that made it, and its reader thread."""

    def __init__(self, on_started: Callable[[str], None]) -> None:
        self._on_started = on_started
        self._pid = os.getpid()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._thread: Optional[threading.Thread] = threading.Thread(
            target=self._read, name="brb-start-notes", daemon=True
        )
        self._thread.start()

    def note(self, key: str) -> None:
        """Says that the job ``key`` has begun; from any process forked after this one."""
        if os.getpid() == self._pid:
            self._on_started(key)
            return
        data = key.encode("utf-8", "replace")
        if b"\n" in data or len(data) > MAX_KEY:
            return
        try:
            os.write(self._w, data + b"\n")
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EPIPE, errno.EBADF):
                raise

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                log.warning("brb start notes: the pipe broke: %s", e)
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    self._on_started(line.decode("utf-8", "replace"))
                except Exception:  # noqa: BLE001 - the reader must outlive any one note
                    log.exception("brb start notes: handling a note failed")
