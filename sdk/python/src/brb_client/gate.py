"""The worker gate: what a background worker checks before taking a job.

A :class:`Gate` follows one switch. A background thread opens an event stream (SSE on
``/api/v1/switches/{name}/events``, or long-polls when SSE cannot be held); one reader thread
per process (``_hub``) reads every gate's stream, so a change pushed to many gates of one
process is applied by one thread in turn rather than by many threads racing for the interpreter
lock. What a gate learns goes into plain attributes: :meth:`Gate.is_open` is an attribute read
with no I/O, to call before every job.

:meth:`Gate.job` is the fuller form, a context manager: it blocks until the switch lets work
through, counts the job as in flight until the ``with`` block ends (so the gate can report
``draining`` while jobs started before a pause finish), and applies a release ramp by duty
cycle: at an admitted fraction ``f`` each job slot rests ``duration * (1 - f) / f`` after a job,
so the worker does ``f`` of its normal work whatever its job length, and the fleet follows the
ramp with no coordination beyond the switch state every gate already has.

When the control plane cannot be reached the gate keeps the last known state
(``keep_last_known``, the default: a pause is never silently undone by a network problem), or
fails open or closed after a grace period. Reconnects use exponential backoff with full
jitter, so a fleet does not reconnect in the same millisecond after a control-plane restart.
A refused token (401/403) is logged once, clearly, and retried only at the long interval
(``backoff_cap``); a 429 is retried no sooner than its ``Retry-After``.

Same model as the Rust SDK's ``brb_client::Gate`` (crates/brb-client/src/gate.rs).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _sse
from ._http import (
    API_PREFIX,
    ApiError,
    Base,
    BrbError,
    ConfigError,
    Connector,
    ProtocolError,
    Session,
    TlsOptions,
    Unreachable,
    describe,
    env_flag,
    error_from,
    parse_base,
    read_head,
    read_some_body,
)
from ._hub import Hub, Stream
from ._switch import BadSwitch, Ramp, SwitchView, check_name, decode_switch, parse_switch

log = logging.getLogger("brb_client")


class FailurePolicy(str, enum.Enum):
    """What the gate does when the control plane cannot be reached."""

    KEEP_LAST_KNOWN = "keep_last_known"
    """Keep acting on the last state the control plane confirmed (closed if none yet)."""
    OPEN = "open"
    """After the grace period, let work through."""
    CLOSED = "closed"
    """After the grace period, stop work."""


class Transport(str, enum.Enum):
    """How the gate learns about changes."""

    AUTO = "auto"
    """SSE, falling back to long-poll when SSE keeps failing (a proxy that refuses or buffers
    event streams), retrying SSE every few minutes."""
    SSE = "sse"
    LONG_POLL = "long_poll"


@dataclass
class GateConfig:
    """Settings of a :class:`Gate`; every field but ``urls`` and ``switch`` has a default."""

    urls: Sequence[str]
    """Control-plane base URLs (replicas); each gate starts at a random one."""
    switch: str = "workers"
    token: Optional[str] = field(default=None, repr=False)
    """The bearer token; else ``token_file``, else ``BRB_TOKEN``, else ``BRB_TOKEN_FILE``."""
    token_file: Optional[str] = None
    worker_id: Optional[str] = None
    """Defaults to ``hostname-pid-random``."""
    policy: FailurePolicy = FailurePolicy.KEEP_LAST_KNOWN
    grace: float = 10.0
    """Seconds the control plane may be unreachable before ``OPEN``/``CLOSED`` apply."""
    max_concurrency: int = 1
    """Jobs this gate admits at once (the ramp's duty cycle applies per slot)."""
    report_interval: float = 5.0
    """Heartbeat report interval, seconds (a report also goes out at once on every change)."""
    transport: Transport = Transport.AUTO
    backoff_base: float = 1.0
    """First reconnect delay bound, seconds; doubles per failed attempt up to ``backoff_cap``."""
    backoff_cap: float = 30.0
    idle_timeout: float = 45.0
    """A stream that sends nothing (not even a keep-alive) for this long is dead."""
    connect_timeout: float = 3.0
    answer_timeout: float = 10.0
    """How long a request may wait for its answer (a long-poll: this beyond its ``wait``)."""
    long_poll_wait: int = 25
    tls: TlsOptions = field(default_factory=TlsOptions)
    reports: bool = True
    """Report to the control plane on every change and every ``report_interval``. Off only
    where nobody reads acknowledgements (a benchmark of pure fan-out)."""
    send_samples: bool = True
    """Send a ``sdk_jobs_processed`` counter sample once a second while jobs are done."""
    start_wait: float = 2.0
    """How long a report of a closed gate waits for jobs admitted before the close but not yet
    started (``try_job(starting=True)``) to start, seconds: the acknowledgement of a pause must
    come after every job the worker had already handed on has begun."""
    on_report: Optional[Callable[[Dict[str, Any], float], None]] = field(default=None, repr=False, compare=False)
    """Called after each report the control plane accepted, with the report and the Unix time
    just before it was sent (no acknowledgement can be older). From the reporter thread."""

    @classmethod
    def from_env(cls, switch: str = "workers", **overrides: Any) -> "GateConfig":
        """``BRB_URL`` (comma-separated replicas), ``BRB_TOKEN``/``BRB_TOKEN_FILE``,
        ``BRB_CA_FILE``, ``BRB_CLIENT_CERT``/``BRB_CLIENT_KEY``, ``BRB_INSECURE_HTTP``."""
        urls = [u for u in os.environ.get("BRB_URL", "http://127.0.0.1:7070").split(",") if u.strip()]
        tls = TlsOptions(
            ca_file=os.environ.get("BRB_CA_FILE") or None,
            client_cert=os.environ.get("BRB_CLIENT_CERT") or None,
            client_key=os.environ.get("BRB_CLIENT_KEY") or None,
            allow_insecure_http=env_flag("BRB_INSECURE_HTTP"),
        )
        return cls(urls=urls, switch=switch, **{"tls": tls, **overrides})


def default_worker_id() -> str:
    """``hostname-pid-random``, unique enough to tell workers apart."""
    host = socket.gethostname() or "worker"
    return f"{host}-{os.getpid()}-{random.getrandbits(16):04x}"


def resolve_token(cfg: GateConfig) -> Optional[str]:
    """The token from the config, its file, ``BRB_TOKEN`` or ``BRB_TOKEN_FILE``, in that order."""
    env_token = os.environ.get("BRB_TOKEN")
    env_file = os.environ.get("BRB_TOKEN_FILE")
    path: Optional[str] = None
    if cfg.token is not None:
        token, source = cfg.token, "token"
    elif cfg.token_file:
        path = cfg.token_file
    elif env_token:
        token, source = env_token, "BRB_TOKEN"
    elif env_file:
        path = env_file
    else:
        return None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read()
        except OSError as e:
            raise ConfigError(f"token file {path}: {e.strerror or e}") from None
        source = f"token file {path}"
    token = token.strip()
    if not token or any(ord(c) < 0x21 or ord(c) == 0x7F for c in token):
        # Never echo the value: it is a secret even when malformed.
        raise ConfigError(f"the {source} is empty or has spaces or control characters in it")
    return token


def backoff(base: float, cap: float, attempt: int) -> float:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 20)))
    return ceiling * random.random()


#: Failed reconnects retried within ``backoff_base`` before the bound starts doubling.
FLAT_ATTEMPTS = 2
#: Consecutive SSE failures before ``AUTO`` falls back to long-poll.
SSE_FAILURES_BEFORE_FALLBACK = 3
#: How long ``AUTO`` stays on long-poll before trying SSE again (seconds).
LONG_POLL_SPELL = 300.0
#: Longest delay a ``Retry-After`` may impose (seconds).
MAX_RETRY_AFTER = 600.0
#: A long-poll answering at once without a change, this often in a row, is a misbehaving
#: peer (not the brb server): the gate then paces its requests.
FAST_EMPTY_POLLS = 3


@dataclass
class _Outcome:
    """How one connection attempt ended."""

    heard: bool = False
    refused: bool = False  # the server answered, but not with a stream
    error: Optional[BaseException] = None


class Job:
    """A job in flight. ``done()`` (or leaving its ``with`` block) ends it."""

    __slots__ = ("_gate", "_slot", "_started", "_ended", "_starting")

    def __init__(self, gate: "Gate", slot: int, started: float, starting: bool = False) -> None:
        self._gate = gate
        self._slot = slot
        self._started = started
        self._ended = False
        self._starting = starting

    def started(self) -> None:
        """The job handed on (to a pool process, a forked child) has begun. Only for jobs
        taken with ``try_job(starting=True)``; ending the job counts as started too."""
        if self._starting:
            self._gate._job_started(self)

    def done(self) -> None:
        """The job is finished: counted, and its slot rests per the ramp."""
        if not self._ended:
            self._ended = True
            self.started()
            self._gate._release(self._slot, self._started, counted=True)

    def abandon(self) -> None:
        """Gives the slot back without counting a job (the worker found nothing to do)."""
        if not self._ended:
            self._ended = True
            self.started()
            self._gate._release(self._slot, self._started, counted=False)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done()


class _Admission:
    """What ``gate.job()`` returns: admits on ``__enter__``, ends the job on ``__exit__``."""

    __slots__ = ("_gate", "_timeout", "_job")

    def __init__(self, gate: "Gate", timeout: Optional[float]) -> None:
        self._gate = gate
        self._timeout = timeout
        self._job: Optional[Job] = None

    def __enter__(self) -> Job:
        self._job = self._gate.acquire(self._timeout)
        return self._job

    def __exit__(self, *exc: Any) -> None:
        if self._job is not None:
            self._job.done()


class _Cond(threading.Condition):
    """A condition that counts its waiters, so that a change nobody waits for (the usual
    delivery) skips ``notify_all``'s Python-level work: a thousand gates of one process are
    applied in turn by one thread, and each microsecond there is a millisecond for the last."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.waiting = 0  # changed with the lock held (wait() holds it on entry and on return)

    def wait(self, timeout: Optional[float] = None) -> bool:
        self.waiting += 1
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1

    def notify_waiters(self) -> None:
        if self.waiting:
            self.notify_all()


class _StreamConsumer:
    """What an open event stream's bytes do to a gate (run by the stream reader's thread)."""

    def __init__(self, gate: "Gate", base: Base, memo: _sse.Memo) -> None:
        self.gate = gate
        self.base = base
        self.parser = _sse.Parser()
        # The stream reader's: the decoding the gates of the process share.
        self.memo = memo
        self.heard = False
        self.resync = False

    def on_bytes(self, data: bytes) -> Optional[_Outcome]:
        g = self.gate
        if g._stopping:
            return _Outcome(heard=self.heard)
        if not self.heard:
            self.heard = True
            g._set_connected(True)
        events = self.memo.feed(self.parser, data)  # an SseError ends the stream (on_end)
        if not events:
            g._contact()  # a keep-alive
            return None
        for ev in events:
            if ev.event == "switch":
                try:
                    sw = check_name(self.memo.decoded(ev.data, decode_switch), g._switch)
                except BadSwitch as e:
                    log.warning("switch %s: ignoring an unreadable switch event from %s: %s", g._switch, self.base.url, e)
                    continue
                g._apply(sw, after_resync=self.resync)
                self.resync = False
            elif ev.event == "resync":
                # Too far behind to replay each change: the state that follows is current,
                # even if its version is lower (the switch was deleted and made again).
                log.info("switch %s: the stream skipped changes (%s); taking the current state", g._switch, ev.data[:200])
                self.resync = True
                g._contact()
            elif ev.event == "deleted":
                log.error("switch %s was deleted; keeping the last known state", g._switch)
                return _Outcome(heard=True)
            else:
                g._contact()  # an event this SDK does not know: proof of life, no more
        return None

    def on_end(self, reason: str, error: Optional[BaseException]) -> _Outcome:
        url = self.base.url
        if reason == "silent":
            log.warning(
                "switch %s: the event stream from %s was silent for %.0f s; reconnecting",
                self.gate._switch, url, self.gate._cfg.idle_timeout,
            )
            return _Outcome(heard=self.heard, refused=not self.heard)
        if reason == "eof" or error is None:
            # The server ended the stream (a restart, a revoked token); ended before a single
            # byte, it is what a proxy refusing streams does.
            return _Outcome(heard=self.heard, refused=not self.heard)
        if isinstance(error, _sse.SseError):
            return _Outcome(heard=self.heard, error=ProtocolError(f"{url}: unreadable event stream: {error}"))
        if isinstance(error, OSError):
            return _Outcome(heard=self.heard, error=Unreachable(f"{url}: the event stream broke: {describe(error)}"))
        return _Outcome(heard=self.heard, error=ProtocolError(f"{url}: unexpected error: {type(error).__name__}: {error}"))


class Gate:
    """A gate on one switch. Threads: one watcher (it opens the stream, then waits while the
    process's stream reader reads it), one reporter (if ``reports`` or ``send_samples``), one
    policy clock (unless ``keep_last_known``); all daemons, stopped by :meth:`close`. Make gates
    after a fork (prefork servers), not before: threads do not survive it."""

    def __init__(self, config: GateConfig) -> None:
        if config.max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1")
        if not config.switch:
            raise ConfigError("no switch named")
        if config.grace < 0 or config.backoff_base <= 0 or config.backoff_cap < config.backoff_base:
            raise ConfigError("grace must be >= 0 and 0 < backoff_base <= backoff_cap")
        if config.report_interval <= 0 or config.idle_timeout <= 0:
            raise ConfigError("report_interval and idle_timeout must be positive")
        bases = [parse_base(u, config.tls) for u in config.urls if u and u.strip()]
        if not bases:
            raise ConfigError("no control-plane URL given")
        self._cfg = replace(
            config,
            token=None,
            policy=FailurePolicy(config.policy),
            transport=Transport(config.transport),
            worker_id=config.worker_id or default_worker_id(),
        )
        self._switch = config.switch
        self._connector = Connector(bases, resolve_token(config), config.tls, config.connect_timeout)
        self._start_index = random.randrange(len(bases))
        self._lock = threading.Lock()
        self._cond = _Cond(self._lock)
        self._stop = threading.Event()
        self._stopping = False  # `_stop.is_set()` as a plain read, for the per-delivery path
        self._report_now = threading.Event()
        # What `is_open` reads: written only under the lock, read without it.
        self._open = False
        self._known: Optional[str] = None  # "running" | "paused" once the control plane spoke
        self._version = 0
        self._ramp: Optional[Ramp] = None
        self._connected = False
        self._last_contact: Optional[float] = None  # Unix seconds
        self._lost_at: Optional[float] = None  # monotonic seconds
        self._resync_pending = False
        self._in_flight = 0
        self._starting = 0  # admitted jobs handed on and not yet begun
        self._sent_ok = False  # whether the reporter's last POST was accepted
        self._listeners: List[Callable[[], None]] = []
        self._processed = 0
        self._slots: List[float] = [0.0] * config.max_concurrency  # monotonic "free at"
        self._connects = 0
        self._connect_times: List[float] = []  # Unix seconds
        # The last version applied and when (Unix µs; 0: never). Two ints, not a tuple: a
        # tuple per delivery is a container the garbage collector tracks, and a thousand gates
        # keeping theirs filled its oldest generation press after press until a full
        # collection (tens of ms with a thousand gates) landed in the middle of a press.
        self._last_change_version = 0
        self._last_change_us = 0
        self._stream_sock: Optional[socket.socket] = None
        self._poll_session: Optional[Session] = None
        self._report_session: Optional[Session] = None
        self._threads: List[threading.Thread] = []
        self._reporting = config.reports or config.send_samples
        name = f"brb-{self._switch}"
        self._spawn(self._watch, f"{name}-watch")
        if self._reporting:
            self._spawn(self._report_loop, f"{name}-report")
        if self._cfg.policy is not FailurePolicy.KEEP_LAST_KNOWN:
            self._spawn(self._policy_clock, f"{name}-policy")

    @classmethod
    def from_env(cls, switch: str = "workers", **overrides: Any) -> "Gate":
        return cls(GateConfig.from_env(switch, **overrides))

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def __repr__(self) -> str:
        return (
            f"Gate(switch={self._switch!r}, worker_id={self._cfg.worker_id!r}, "
            f"open={self._open}, version={self._version}, connected={self._connected})"
        )

    # ----- what a worker calls -----

    def is_open(self) -> bool:
        """Whether the switch lets work through now. No I/O, no lock: call it before every job."""
        return self._open

    def wait_open(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the switch lets work through; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._open:
                if self._stop.is_set():
                    return False
                if deadline is None:
                    self._cond.wait(1.0)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 1.0))
            return True

    def try_job(self, starting: bool = False) -> Optional[Job]:
        """Takes a job slot without waiting: None when closed, every slot busy, or the ramp's
        duty cycle has the free slots resting.

        ``starting=True`` is for a worker that hands the job to another process or thread to
        begin: until ``job.started()`` (or its end), a report of a pause waits for it (up to
        ``start_wait``), so that no job begins after the pause was acknowledged."""
        if not self._open:
            return None
        with self._lock:
            job = self._take_slot()
            if job is not None and starting:
                job._starting = True
                self._starting += 1
            return job

    def wait_admissible(self, timeout: Optional[float] = None) -> bool:
        """Blocks until ``try_job`` would admit a job (open, a slot free and rested), without
        taking it: for a worker that must not hold a slot while it waits for a job to arrive.
        False if ``timeout`` passed first or the gate was closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stop.is_set():
                    return False
                now = time.monotonic()
                if self._open and any(free_at <= now for free_at in self._slots):
                    return True
                if deadline is not None and now >= deadline:
                    return False
                wait = 1.0
                if self._open:
                    wait = min(max(min(self._slots) - now, 0.001), 0.25)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                self._cond.wait(wait)

    def next_admission_in(self) -> Optional[float]:
        """Seconds until a slot is free and rested (0: now); None while closed or while every
        slot is busy with a job (it frees when a job ends)."""
        if not self._open:
            return None
        with self._lock:
            soonest = min(self._slots)
        if math.isinf(soonest):
            return None
        return max(0.0, soonest - time.monotonic())

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called after every change the gate applies (state, version, ramp,
        connection), from the gate's own threads: it must be quick and must not block (wake
        the worker's loop, nothing more)."""
        with self._lock:
            self._listeners.append(fn)

    def acquire(self, timeout: Optional[float] = None) -> Job:
        """Blocks until the switch is open and a slot is free (and rested, during a ramp).
        Raises ``TimeoutError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._stop.is_set():
                    raise BrbError("the gate is closed")
                job = self._take_slot()
                if job is not None:
                    return job
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("not admitted in time")
                wait = 1.0
                if self._open:
                    # Open but no slot yet: until a job ends or the next slot has rested.
                    wait = min(max(min(self._slots) - now, 0.001), 0.25)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                self._cond.wait(wait)

    def job(self, timeout: Optional[float] = None) -> _Admission:
        """``with gate.job(): process()``: blocks until admitted, counts the job in flight
        until the block ends. Raises ``TimeoutError`` if not admitted within ``timeout``."""
        return _Admission(self, timeout)

    def admitted_fraction(self) -> float:
        """The fraction of normal work admitted now: 0 when closed, the ramp's fraction while
        ramping, else 1."""
        if not self._open:
            return 0.0
        ramp = self._ramp
        if ramp is not None and self._known == "running":
            return ramp.fraction_at(time.time())
        return 1.0

    @property
    def version(self) -> int:
        """The switch version this gate acts on (0 before first contact)."""
        return self._version

    def is_connected(self) -> bool:
        return self._connected

    def staleness(self) -> Optional[float]:
        """How stale the gate's knowledge may be, in seconds: 0 while the stream is connected
        (every change is pushed at once), else the time since the control plane was last
        heard from; None if it never was."""
        if self._connected:
            return 0.0
        last = self._last_contact
        return None if last is None else max(0.0, time.time() - last)

    def status(self) -> str:
        """What the gate reports: ``running``, ``draining`` or ``paused``."""
        if self._open:
            return "running"
        return "draining" if self._in_flight > 0 else "paused"

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def processed(self) -> int:
        return self._processed

    @property
    def worker_id(self) -> str:
        return self._cfg.worker_id or ""

    @property
    def connects(self) -> int:
        """How many times the stream (or a long-poll spell) connected."""
        return self._connects

    def connect_times(self) -> List[float]:
        """When the stream connected, each time (Unix seconds)."""
        with self._lock:
            return list(self._connect_times)

    def last_change(self) -> Optional[Tuple[int, int]]:
        """The last version applied and when (Unix microseconds): from that instant
        ``is_open`` answered accordingly. How a benchmark measures propagation."""
        with self._lock:
            us = self._last_change_us
            return None if us == 0 else (self._last_change_version, us)

    def ready(self, timeout: float) -> bool:
        """Waits until the gate has heard from the control plane once (or the timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._known is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 1.0))
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stops the gate's threads and closes its connections."""
        self._stopping = True
        self._stop.set()
        self._report_now.set()
        # Shut down, not closed: the stream reader sees the end and lets the stream go.
        sock = self._stream_sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._abort_sessions()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- state, under the lock -----

    def _take_slot(self) -> Optional[Job]:
        if not self._open:
            return None
        now = time.monotonic()
        for i, free_at in enumerate(self._slots):
            if free_at <= now:
                self._slots[i] = math.inf  # busy until the job ends
                self._in_flight += 1
                return Job(self, i, now)
        return None

    def _job_started(self, job: Job) -> None:
        # Under the lock: a start note (another thread) and the job's end may race to say it.
        with self._cond:
            if job._starting:
                job._starting = False
                self._starting -= 1
                self._cond.notify_all()

    def _notify_listeners(self) -> None:
        if not self._listeners:
            return  # the usual case: no list copied per delivery
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a listener must not break the gate
                log.exception("switch %s: a gate listener failed", self._switch)

    def _await_starts(self) -> None:
        """Holds a report of a closed gate until the jobs handed on before the close began."""
        deadline = time.monotonic() + self._cfg.start_wait
        with self._cond:
            while not self._open and self._starting > 0 and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "switch %s: %d job(s) handed on before the pause have not begun after %.1f s; reporting anyway",
                        self._switch, self._starting, self._cfg.start_wait,
                    )
                    return
                self._cond.wait(left)

    def _release(self, slot: int, started: float, counted: bool) -> None:
        now = time.monotonic()
        rest = 0.0
        if counted:
            f = self.admitted_fraction()
            # Duty cycle: at fraction f the slot rests took*(1-f)/f, so it works f of the time.
            if 0.0 < f < 1.0:
                rest = (now - started) * (1.0 - f) / f
        with self._cond:
            self._slots[slot] = now + rest
            self._in_flight -= 1
            if counted:
                self._processed += 1
            drained = self._in_flight == 0 and not self._open
            self._cond.notify_all()
        if drained:
            self._wake_reporter()  # drained: say so at once

    def _recompute(self) -> bool:
        """The effective decision from what is known and how long ago (lock held). True when it
        changed (waiters and the reporter were woken)."""
        if self._lost_at is None:  # connected: the policy has nothing to say (every delivery)
            is_open = self._known == "running"
            if is_open == self._open:
                return False
            self._open = is_open
            self._cond.notify_waiters()
            self._wake_reporter()
            return True
        beyond_grace = time.monotonic() - self._lost_at >= self._cfg.grace
        policy = self._cfg.policy
        if policy is FailurePolicy.OPEN and beyond_grace:
            is_open = True
        elif policy is FailurePolicy.CLOSED and beyond_grace:
            is_open = False
        else:
            is_open = self._known == "running"
        if is_open == self._open:
            return False
        self._open = is_open
        self._cond.notify_waiters()
        self._wake_reporter()
        if self._lost_at is not None and policy is not FailurePolicy.KEEP_LAST_KNOWN:
            log.warning(
                "switch %s: control plane unreachable past the %.1f s grace period; failing %s",
                self._switch, self._cfg.grace, policy.value,
            )
        return True

    def _wake_reporter(self) -> None:
        if self._reporting and not self._report_now.is_set():
            self._report_now.set()

    def _apply(self, sw: SwitchView, after_resync: bool = False) -> None:
        # The lock itself, not the condition's Python-level __enter__: the same lock.
        with self._lock:
            if sw.version < self._version and self._known is not None and not after_resync:
                return  # an older state (a replica lagging): ignore
            prev = self._known
            self._ramp = sw.ramp
            if sw.version != self._version or prev is None:
                self._last_change_us = time.time_ns() // 1000
                self._last_change_version = sw.version
            self._version = sw.version
            self._known = sw.state
            self._last_contact = time.time()
            if not self._recompute():
                # Waiters and the reporter also learn of a new version or ramp.
                self._cond.notify_waiters()
                self._wake_reporter()
        if self._listeners:
            self._notify_listeners()
        if prev is None:
            log.debug("switch %s: %s at version %d", sw.name, sw.state, sw.version)
        elif prev != sw.state and log.isEnabledFor(logging.INFO):
            log.info(
                "switch %s: %s at version %d by %s (%s)",
                sw.name, sw.state, sw.version, sw.changed_by, sw.source,
            )

    def _contact(self) -> None:
        self._last_contact = time.time()

    def _set_connected(self, yes: bool) -> None:
        with self._cond:
            was = self._connected
            self._connected = yes
            if yes:
                self._lost_at = None
                if not was:
                    self._connects += 1
                    self._connect_times.append(time.time())
            elif was or self._lost_at is None:
                self._lost_at = time.monotonic()
            changed = self._recompute()
        if changed:
            self._notify_listeners()

    def _report_body(self) -> Dict[str, Any]:
        return {
            "worker_id": self._cfg.worker_id,
            "switch": self._switch,
            "observed_version": self._version,
            "status": self.status(),
            "in_flight": self._in_flight,
            "processed_total": self._processed,
        }

    # ----- background threads -----

    def _watch(self) -> None:
        attempt = 0
        sse_failures = 0
        long_poll_until: Optional[float] = None
        last_problem = ""
        while not self._stop.is_set():
            t = self._cfg.transport
            use_long_poll = t is Transport.LONG_POLL or (
                t is Transport.AUTO and long_poll_until is not None and time.monotonic() < long_poll_until
            )
            try:
                out = self._long_poll() if use_long_poll else self._sse()
            except Exception as e:  # noqa: BLE001 - the watcher must outlive any one attempt
                log.exception("switch %s: unexpected error in the watcher; retrying", self._switch)
                out = _Outcome(error=ProtocolError(f"unexpected error: {type(e).__name__}: {e}"))
            self._set_connected(False)
            if self._stop.is_set():
                return
            if not use_long_poll:
                sse_failures = 0 if out.heard else sse_failures + (1 if out.refused else 0)
            if t is Transport.AUTO and long_poll_until is None and sse_failures >= SSE_FAILURES_BEFORE_FALLBACK:
                log.warning("switch %s: the event stream keeps failing; falling back to long-poll", self._switch)
                long_poll_until = time.monotonic() + LONG_POLL_SPELL
                sse_failures = 0
            elif long_poll_until is not None and time.monotonic() >= long_poll_until:
                long_poll_until = None
            # A stream that worked resets the backoff; one that ended in garbage does not, so
            # a peer that keeps sending it is asked less and less often.
            attempt = 0 if out.heard and not isinstance(out.error, ProtocolError) else attempt + 1
            delay = backoff(self._cfg.backoff_base, self._cfg.backoff_cap, max(0, attempt - FLAT_ATTEMPTS))
            err = out.error
            problem = ""
            if isinstance(err, ApiError) and err.is_auth:
                # Not a blip: a wrong, expired or revoked token, or a role too low. Say so once,
                # then ask again only at the long interval: a fleet with a bad token must not
                # hammer the control plane (nor its auth-failure limiter).
                delay = self._cfg.backoff_cap
                problem = (
                    f"switch {self._switch}: the control plane refused this worker's token "
                    f"({err.message}; {err.code}, HTTP {err.status}): check BRB_TOKEN / "
                    f"BRB_TOKEN_FILE and the token's role and scope; retrying every "
                    f"{self._cfg.backoff_cap:g} s, keeping the last known state"
                )
                level = logging.ERROR
            elif isinstance(err, ApiError) and err.is_redirect:
                problem = (
                    f"switch {self._switch}: the control plane answered HTTP {err.status} "
                    f"redirecting to {err.location or '?'}; redirects are not followed (the "
                    "token would go along): check the URL"
                )
                level = logging.ERROR
            elif isinstance(err, ApiError) and err.status == 429:
                wait = min(err.retry_after if err.retry_after is not None else delay, MAX_RETRY_AFTER)
                delay = max(delay, wait)
                problem = (
                    f"switch {self._switch}: the control plane is limiting this client "
                    f"(HTTP 429 {err.code}); retrying in {delay:.1f} s"
                )
                level = logging.WARNING
            elif err is not None:
                problem = f"switch {self._switch}: {err}"
                # A stream that broke after it worked is what a restart or a replica going away
                # looks like (info); never reaching the control plane, or garbage, is a warning.
                level = logging.INFO if out.heard and isinstance(err, Unreachable) else logging.WARNING
            if problem:
                # The first time at its level, repeats quietly: one clear line, not a flood.
                key = problem.split(";")[0]
                log.log(level if key != last_problem else logging.DEBUG, "%s", problem)
                last_problem = key
            else:
                last_problem = ""
            if self._stop.wait(delay):
                return

    def _sse(self) -> _Outcome:
        """Holds one event stream until it ends. Tries each base in turn until one answers.
        This thread opens the stream; the process's stream reader (``_hub``) reads it."""
        bases = self._connector.bases
        n = len(bases)
        last_err: Optional[BaseException] = None
        for i in range(n):
            idx = (self._start_index + i) % n
            base = bases[idx]
            try:
                sock = self._connector.open_socket(base, self._cfg.answer_timeout)
            except (OSError, ValueError) as e:
                last_err = Unreachable(f"{base.url}: {describe(e)}")
                continue
            self._stream_sock = sock
            try:
                extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
                with self._lock:
                    if self._known is not None:
                        extra["Last-Event-ID"] = str(self._version)
                host = f"[{base.host}]" if ":" in base.host else base.host
                lines = [
                    f"GET {base.path}{API_PREFIX}/switches/{_quote(self._switch)}/events HTTP/1.1",
                    f"Host: {host}:{base.port}",
                ] + [f"{k}: {v}" for k, v in self._connector.headers(extra).items()]
                try:
                    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                    status, headers, rest = read_head(sock)
                except OSError as e:
                    last_err = Unreachable(f"{base.url}: no answer to the event-stream request: {describe(e)}")
                    continue
                except Unreachable as e:
                    last_err = Unreachable(f"{base.url}: no answer to the event-stream request: {e}")
                    continue
                except ProtocolError as e:
                    self._start_index = idx
                    return _Outcome(refused=True, error=ProtocolError(f"{base.url}: {e}"))
                # An answer, even an error, is final for this attempt; start here next time.
                self._start_index = idx
                ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if status != 200 or ctype != "text/event-stream":
                    if status == 200:
                        err: BaseException = ProtocolError(
                            f"{base.url}: the event stream came back as {ctype or 'no content type'}, not text/event-stream"
                        )
                    else:
                        err = error_from(status, headers, read_some_body(sock, headers, rest))
                    return _Outcome(refused=True, error=err)
                sock.setblocking(False)
                hub = Hub.get()
                consumer = _StreamConsumer(self, base, hub.memo)
                stream = Stream(
                    sock,
                    rest,
                    "chunked" in (headers.get("Transfer-Encoding") or "").lower(),
                    self._cfg.idle_timeout,
                    consumer.on_bytes,
                    consumer.on_end,
                )
                hub.attach(stream)
                # `close` shuts the socket down and the reader ends the stream at once. Rare
                # wake-ups: a thousand gates' threads polling would take the interpreter lock
                # from the reader itself.
                while not stream.done.wait(30.0):
                    if self._stop.is_set():
                        return _Outcome(heard=consumer.heard)
                return stream.result
            finally:
                self._stream_sock = None
                sock.close()
        return _Outcome(error=last_err)

    def _abort_sessions(self) -> None:
        for s in (self._poll_session, self._report_session):
            if s is not None:
                s.abort()

    def _long_poll(self) -> _Outcome:
        """Long-polls until an error. Whether it heard from the control plane at all."""
        session = Session(self._connector, self._start_index)
        self._poll_session = session
        heard = False
        fast_empty = 0
        try:
            while not self._stop.is_set():
                with self._lock:
                    known, version = self._known, self._version
                path = f"/switches/{_quote(self._switch)}"
                wait = self._cfg.long_poll_wait
                if known is not None:
                    path += f"?after_version={version}&wait={wait}"
                asked = time.monotonic()
                try:
                    doc = session.request("GET", path, timeout=wait + self._cfg.answer_timeout)
                    sw = parse_switch(doc, self._switch)
                except BadSwitch as e:
                    log.warning("switch %s: ignoring an unreadable long-poll answer: %s", self._switch, e)
                    return _Outcome(heard=heard, error=ProtocolError(str(e)))
                except BrbError as e:
                    return _Outcome(heard=heard, refused=isinstance(e, ApiError), error=e)
                self._start_index = session.index
                if not heard:
                    heard = True
                    self._set_connected(True)
                unchanged = sw.version == version and known is not None
                self._apply(sw)
                # The brb server holds a long-poll until a change or `wait`; one answering at
                # once with nothing new is something else: pace it.
                fast_empty = fast_empty + 1 if unchanged and time.monotonic() - asked < 1.0 else 0
                if fast_empty >= FAST_EMPTY_POLLS and self._stop.wait(self._cfg.backoff_base):
                    break
            return _Outcome(heard=heard)
        finally:
            self._poll_session = None
            session.close()

    def _report_loop(self) -> None:
        session = Session(self._connector, self._start_index)
        self._report_session = session
        interval = self._cfg.report_interval
        pending = True
        next_report = 0.0
        quiet_until = 0.0
        sent_processed = 0
        next_sample = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                if self._report_now.is_set():
                    self._report_now.clear()
                    pending = True
                now = time.monotonic()
                known = self._known is not None
                if self._cfg.reports and known and now >= quiet_until and (pending or now >= next_report):
                    pending = False
                    self._await_starts()
                    body = self._report_body()
                    sent_at = time.time()
                    quiet_until = self._send(session, "/workers/report", body)
                    next_report = time.monotonic() + interval
                    if quiet_until == 0.0 and self._cfg.on_report is not None and self._sent_ok:
                        try:
                            self._cfg.on_report(body, sent_at)
                        except Exception:  # noqa: BLE001 - a hook must not stop the reports
                            log.exception("switch %s: the on_report hook failed", self._switch)
                if self._cfg.send_samples and now >= next_sample:
                    next_sample = now + 1.0
                    processed = self._processed
                    if processed != sent_processed:
                        sample = {"name": "sdk_jobs_processed", "value": processed - sent_processed, "kind": "counter"}
                        if self._send(session, "/metrics", {"samples": [sample]}) == 0.0:
                            sent_processed = processed
                wake = math.inf
                if self._cfg.send_samples:
                    wake = next_sample
                if self._cfg.reports:
                    if not known:
                        wake = min(wake, now + interval)  # `_apply` sets `_report_now` anyway
                    elif pending:
                        wake = min(wake, quiet_until)
                    else:
                        wake = min(wake, max(next_report, quiet_until))
                self._report_now.wait(max(0.005, wake - time.monotonic()))
        finally:
            session.close()

    def _send(self, session: Session, path: str, body: Any) -> float:
        """POSTs a report or samples; answers until when to stay quiet (0: not at all)."""
        self._sent_ok = False
        try:
            session.request("POST", path, body, timeout=self._cfg.answer_timeout)
            self._sent_ok = True
            return 0.0
        except ApiError as e:
            if e.is_auth or e.status == 429:
                quiet = max(self._cfg.report_interval, min(e.retry_after or self._cfg.backoff_cap, MAX_RETRY_AFTER))
                log.debug("switch %s: POST %s refused: %s; quiet for %.0f s", self._switch, path, e, quiet)
                return time.monotonic() + quiet
            log.debug("switch %s: POST %s failed: %s", self._switch, path, e)
        except BrbError as e:
            log.debug("switch %s: POST %s failed: %s", self._switch, path, e)
        except Exception:  # noqa: BLE001 - the reporter must outlive any one request
            log.exception("switch %s: unexpected error sending %s", self._switch, path)
            session.close()
            return time.monotonic() + self._cfg.report_interval
        return 0.0

    def _policy_clock(self) -> None:
        """Re-evaluates the failure policy while disconnected (the grace runs out by itself)."""
        tick = min(0.25, max(self._cfg.grace, 0.01))
        while not self._stop.wait(tick):
            if not self._connected:
                with self._cond:
                    changed = self._recompute()
                if changed:
                    self._notify_listeners()


def _quote(segment: str) -> str:
    out = []
    for ch in segment:
        if ch.isascii() and (ch.isalnum() or ch in "-_.~"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)
