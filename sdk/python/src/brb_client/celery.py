"""The Big Red Button for Celery workers: one line in the app.

::

    from celery import Celery
    import brb_client.celery

    app = Celery("tasks", broker="redis://localhost:6379/0")
    brb_client.celery.install(app)          # BRB_URL, BRB_TOKEN / BRB_TOKEN_FILE, BRB_SWITCH

What it does, in the worker's main process (the one that talks to the broker; the default
prefork pool's children only run tasks):

- **Paused: stops consuming.** The task consumer is cancelled (the effect of the
  ``cancel_consumer`` remote control on every queue, for this worker only), so no new message
  is fetched.
- **Prefetched messages never start while paused.** A message the worker had prefetched but
  not handed to a pool process is *given back to the broker* (``reject(requeue=True)``) at the
  pause, not held: a pause can outlast the Redis transport's ``visibility_timeout`` (one hour
  by default), after which another worker would restore and run a held message while this one
  still held it (run twice); and a worker killed during the pause would leave its held messages
  invisible until then. A task not yet begun has not been acknowledged, so giving it back
  loses nothing and runs nothing twice.
- **Tasks already running finish**; the worker reports ``draining`` with their count, then
  ``paused``. The acknowledgement of a pause waits until every task already handed to a pool
  process has begun (each child notes the start of a task from ``task_prerun``), so no task
  is begun after the worker acknowledged the pause (the function of a task begun just before
  may run its first line a moment after; the task is in the in-flight count).
- **Released: consumes again**, and hands tasks to the pool through the gate's admission:
  during a ``brb resume --ramp`` each of the pool's slots rests after a task so that the worker
  runs the ramp's fraction of its normal work (prefetched tasks wait in the worker meanwhile).

Supports the default prefork pool (tested) and ``solo``; ``threads``, ``gevent`` and ``eventlet``
are refused with a clear error. ``acks_late`` is not needed and not changed.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Deque, Dict, Optional

from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state

from ._http import ConfigError
from ._starts import StartNotes
from .gate import Gate, GateConfig, Job

log = logging.getLogger("brb_client.celery")

__all__ = ["install", "BrakeStep"]

_CONFIG_ATTR = "_brb_gate_config"
SUPPORTED_POOLS = ("prefork", "solo")

# The one brake of this worker process (a worker runs one consumer). Module-level so that pool
# children forked from the main process find its start-note pipe from `task_prerun`.
_brake: Optional["_Brake"] = None
_brake_lock = threading.Lock()


def install(app: Celery, config: Optional[GateConfig] = None) -> None:
    """Wires the Big Red Button into ``app``'s workers. ``config`` defaults to
    ``GateConfig.from_env(os.environ.get("BRB_SWITCH", "workers"))``; its ``max_concurrency``
    is set to the pool's size and its ``worker_id`` defaults to the worker's node name and pid.
    Harmless in processes that only send tasks: nothing starts until a worker starts."""
    setattr(app, _CONFIG_ATTR, config)
    app.steps["consumer"].add(BrakeStep)
    # Before the pool forks its children, so that they inherit the start-note pipe.
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="brb_client.celery.init")
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="brb_client.celery.prerun")


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _brake
    with _brake_lock:
        if _brake is None:
            _brake = _Brake()


def _on_task_prerun(sender: Any = None, task_id: Optional[str] = None, **_: Any) -> None:
    brake = _brake
    if brake is not None and task_id:
        brake.notes.note(task_id)


class BrakeStep(bootsteps.StartStopStep):
    """The consumer bootstep ``install`` adds. It wraps the consumer's task handler before the
    ``Tasks`` step builds its strategies from it, so every path to the pool (direct, ETA,
    rate-limited) goes through the gate."""

    label = "Big Red Button"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        _on_worker_init()
        assert _brake is not None
        self.brake = _brake
        self.brake.wrap(c)

    def start(self, c: Any) -> None:
        self.brake.start(c)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        self.brake.register(c, hub)

    def stop(self, c: Any) -> None:
        self.brake.forget_held()

    def shutdown(self, c: Any) -> None:
        self.brake.shutdown()


class _Brake:
    """The worker side: the gate, the held requests, the consumer's on/off. Everything but the
    gate's threads and the start-note reader runs in the worker's event loop thread."""

    def __init__(self) -> None:
        self.notes = StartNotes(self._on_started)
        self.gate: Optional[Gate] = None
        self.consumer: Any = None
        self.hub: Any = None
        self.held: Deque[Any] = deque()
        self.starting: Dict[str, Job] = {}
        self.consuming = False
        self._handle: Optional[Callable[[Any], None]] = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._timer_due: Optional[float] = None

    # ----- setup -----

    def wrap(self, c: Any) -> None:
        if self._handle is None:
            self._handle = c.on_task_request
        c.on_task_request = self.on_task_request
        self.consumer = c

    def start(self, c: Any) -> None:
        self.consumer = c
        pool = type(c.pool).__module__.rsplit(".", 1)[-1]  # celery.concurrency.prefork -> prefork
        if c.hub is None or pool not in SUPPORTED_POOLS:
            # The brake runs in the worker's event loop and counts on the pool's callbacks coming
            # back to it: true of prefork (and solo); threads call back from their own threads,
            # gevent and eventlet run no event loop.
            raise ConfigError(
                f"brb_client.celery supports the prefork pool (the default) and solo, with a broker "
                f"the worker runs its event loop for (Redis, AMQP); this worker runs the {pool} pool"
                + ("" if c.hub is not None else " without an event loop")
            )
        if self.gate is not None:
            return
        cfg = getattr(c.app, _CONFIG_ATTR, None) or GateConfig.from_env(os.environ.get("BRB_SWITCH", "workers"))
        ctl = c.controller
        slots = int(getattr(ctl, "max_concurrency", None) or getattr(ctl, "concurrency", None) or c.pool.num_processes)
        cfg = replace(
            cfg,
            max_concurrency=max(1, slots),
            worker_id=cfg.worker_id or f"{c.hostname}-{os.getpid()}",
        )
        self.gate = Gate(cfg)
        self.gate.add_listener(self._poke)
        log.info(
            "Big Red Button: switch %s, %d slot(s), worker %s; not consuming until the control plane answers",
            cfg.switch, cfg.max_concurrency, cfg.worker_id,
        )

    def register(self, c: Any, hub: Any) -> None:
        self.consumer = c
        self.hub = hub
        hub.add_reader(self._wake_r, self._on_wake)
        # asynloop calls `consume()` right after this: the consumer is (about to be) on, and the
        # first turn of the loop sets it as the gate says.
        self.consuming = True
        hub.call_soon(self.reconcile)

    def forget_held(self) -> None:
        # The connection is going away: its unacknowledged messages go back to the broker with
        # it (the Redis transport restores them when the channel closes); nothing to hand on.
        self.held.clear()
        self.consuming = False

    def shutdown(self) -> None:
        self.held.clear()
        if self.gate is not None:
            self.gate.close(timeout=2.0)

    # ----- the event loop side -----

    def on_task_request(self, req: Any) -> None:
        gate = self.gate
        if gate is None:
            self._requeue(req)
            return
        if not self.held:
            job = gate.try_job(starting=True)
            if job is not None:
                self._dispatch(req, job)
                return
        if gate.is_open():
            self.held.append(req)  # a ramp's rest or every slot busy: the next free slot takes it
            self._schedule()
        else:
            log.info("Big Red Button: paused; task %s given back to the broker", req.id)
            self._requeue(req)

    def reconcile(self) -> None:
        gate, c = self.gate, self.consumer
        if gate is None or c is None:
            return
        if not gate.is_open():
            if self.consuming and c.task_consumer is not None:
                c.task_consumer.cancel()
                log.info("Big Red Button: paused; stopped consuming (%d task(s) in flight)", gate.in_flight)
            self.consuming = False
            if self.held:
                log.info("Big Red Button: %d prefetched task(s) given back to the broker", len(self.held))
            while self.held:
                self._requeue(self.held.popleft())
            return
        if not self.consuming and c.task_consumer is not None:
            c.task_consumer.consume()
            self.consuming = True
            log.info("Big Red Button: running; consuming again")
        while self.held:
            job = gate.try_job(starting=True)
            if job is None:
                break
            self._dispatch(self.held.popleft(), job)
        if self.held:
            self._schedule()

    def _schedule(self) -> None:
        gate, hub = self.gate, self.hub
        if gate is None or hub is None:
            return
        delay = gate.next_admission_in()
        if delay is None:
            return  # every slot busy: a task's end reconciles
        now_due = time.monotonic() + delay
        if self._timer_due is not None and self._timer_due <= now_due:
            return
        self._timer_due = now_due

        def fire() -> None:
            if self._timer_due is not None and self._timer_due <= time.monotonic() + 0.001:
                self._timer_due = None
            self.reconcile()

        hub.call_later(max(delay, 0.001), fire)

    def _dispatch(self, req: Any, job: Job) -> None:
        assert self._handle is not None
        task_id = req.id
        self.starting[task_id] = job
        ended = [False]

        def end(counted: bool = True) -> None:
            if ended[0]:
                return
            ended[0] = True
            if self.starting.get(task_id) is job:
                del self.starting[task_id]
            if counted:
                job.done()
            else:
                job.abandon()
            if self.hub is not None:
                self.hub.call_soon(self.reconcile)

        on_success, on_failure, on_timeout = req.on_success, req.on_failure, req.on_timeout

        def success(*a: Any, **kw: Any) -> Any:
            try:
                return on_success(*a, **kw)
            finally:
                end()

        def failure(*a: Any, **kw: Any) -> Any:
            try:
                return on_failure(*a, **kw)
            finally:
                end()

        def timeout(soft: bool, limit: Any) -> Any:
            try:
                return on_timeout(soft, limit)
            finally:
                if not soft:
                    end()

        # Instance attributes: `execute_using_pool` hands these bound names to the pool.
        req.on_success, req.on_failure, req.on_timeout = success, failure, timeout
        try:
            self._handle(req)
        except BaseException:
            end(counted=False)
            raise
        if getattr(req, "_apply_result", None) is None:
            end(counted=False)  # revoked or expired: never reached the pool

    def _requeue(self, req: Any) -> None:
        """Gives a request that was not handed on back to the broker: not begun, not
        acknowledged, so it runs once, later, wherever a worker takes it."""
        worker_state.reserved_requests.discard(req)
        worker_state.requests.pop(req.id, None)
        req.reject(requeue=True)

    # ----- other threads -----

    def _on_started(self, task_id: str) -> None:
        job = self.starting.get(task_id)
        if job is not None:
            job.started()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise

    def _on_wake(self, *_: Any) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.reconcile()
