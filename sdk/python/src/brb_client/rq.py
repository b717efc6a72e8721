"""The Big Red Button for RQ workers: one option on the command line.

::

    rq worker -w brb_client.rq.Worker            # BRB_URL, BRB_TOKEN / BRB_TOKEN_FILE, BRB_SWITCH
    rq worker -w brb_client.rq.SimpleWorker      # the same, jobs in the worker's own process

What it does:

- **Paused: does not dequeue.** Before taking a job the worker waits for the gate (the RQ
  worker shows as ``suspended`` meanwhile, keeps its heartbeat and obeys a stop request). A
  worker already blocked waiting for a job when the pause comes, and handed one after it, puts
  that job back at the front of its queue (not begun, so not run twice, not lost) and waits.
- **Jobs already running finish**; the worker reports ``draining`` with its in-flight count (0
  or 1: an RQ worker runs one job at a time), then ``paused``. The acknowledgement of a pause
  waits until a job already handed to the work horse has begun (the horse notes the start
  right before the job's function runs), so no job is begun after the worker acknowledged it.
- **Released with a ramp**: the worker rests after each job so that it does the ramp's
  fraction of its normal work (at 10 % a job of 100 ms is followed by 900 ms of rest).

Set ``Worker.brb_config`` (a :class:`~brb_client.GateConfig`) in a subclass to configure the
gate in code; by default it comes from the environment
(``GateConfig.from_env(os.environ.get("BRB_SWITCH", "workers"))``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Optional, Tuple

import rq.worker
from rq.exceptions import StopRequested
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job as RqJob
from rq.queue import Queue
from rq.worker import WorkerStatus

from ._starts import StartNotes
from .gate import Gate, GateConfig, Job

__all__ = ["Worker", "SimpleWorker", "BrakeMixin"]

#: How often a paused worker wakes to renew its heartbeat (seconds).
PAUSED_HEARTBEAT = 5.0


class BrakeMixin:
    """The Big Red Button for any RQ worker class (``class W(BrakeMixin, rq.Worker)``)."""

    brb_config: Optional[GateConfig] = None
    """The gate's settings; ``max_concurrency`` is always 1 (an RQ worker runs one job)."""

    _brb_gate: Optional[Gate] = None
    _brb_notes: Optional[StartNotes] = None
    _brb_job: Optional[Job] = None
    _brb_job_id: Optional[str] = None

    @property
    def brb_gate(self) -> Optional[Gate]:
        """The worker's gate, once ``work()`` started it."""
        return self._brb_gate

    def work(self, *args: Any, **kwargs: Any) -> bool:
        cfg = self.brb_config or GateConfig.from_env(os.environ.get("BRB_SWITCH", "workers"))
        cfg = replace(cfg, max_concurrency=1, worker_id=cfg.worker_id or f"rq-{self.name}")  # type: ignore[attr-defined]
        self._brb_gate = Gate(cfg)
        self._brb_notes = StartNotes(self._brb_on_started)
        try:
            return super().work(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._brb_gate.close(timeout=2.0)

    def dequeue_job_and_maintain_ttl(self, timeout: Optional[int], max_idle_time: Optional[int] = None) -> Optional[Tuple[RqJob, Queue]]:
        gate = self._brb_gate
        if gate is None:  # not started through work()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)  # type: ignore[misc]
        while True:
            self._brb_wait_admissible()
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)  # type: ignore[misc]
            if result is None:
                return None
            job, queue = result
            slot = gate.try_job(starting=True)
            if slot is not None:
                self._brb_job, self._brb_job_id = slot, job.id
                return result
            # The pause came while this worker was blocked waiting for a job: it has not begun.
            self._brb_push_back(job, queue)

    def execute_job(self, job: RqJob, queue: Queue) -> Any:
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            slot, self._brb_job, self._brb_job_id = self._brb_job, None, None
            if slot is not None:
                slot.done()

    def perform_job(self, job: RqJob, queue: Queue) -> bool:
        # In the work horse (or in the worker itself for SimpleWorker): note the start right
        # before the job's function, so that a pause is acknowledged only after it.
        notes = self._brb_notes
        if notes is not None:
            execute = job._execute

            def noted() -> Any:
                notes.note(job.id)
                return execute()

            job._execute = noted  # type: ignore[method-assign]
        return super().perform_job(job, queue)  # type: ignore[misc]

    # ----- helpers -----

    def _brb_on_started(self, job_id: str) -> None:
        slot = self._brb_job
        if slot is not None and job_id == self._brb_job_id:
            slot.started()

    def _brb_wait_admissible(self) -> None:
        gate = self._brb_gate
        assert gate is not None
        if gate.wait_admissible(0):
            return
        suspended = False
        try:
            while not gate.wait_admissible(PAUSED_HEARTBEAT):
                if getattr(self, "_stop_requested", False):
                    raise StopRequested()
                if not gate.is_open() and not suspended:
                    suspended = True
                    self.log.info("Worker %s: paused by the Big Red Button", self.name)  # type: ignore[attr-defined]
                    self.set_state(WorkerStatus.SUSPENDED)  # type: ignore[attr-defined]
                    self.procline("paused by the Big Red Button")  # type: ignore[attr-defined]
                self.heartbeat()  # type: ignore[attr-defined]
        finally:
            if suspended:
                self.log.info("Worker %s: released by the Big Red Button", self.name)  # type: ignore[attr-defined]
                self.set_state(WorkerStatus.IDLE)  # type: ignore[attr-defined]

    def _brb_push_back(self, job: RqJob, queue: Queue) -> None:
        """Puts a dequeued job that has not begun back at the front of its queue, in one
        transaction with its removal from RQ's intermediate queue."""
        conn = self.connection  # type: ignore[attr-defined]
        with conn.pipeline() as pipe:
            pipe.lrem(IntermediateQueue.get_intermediate_queue_key(queue.key), 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        self.log.info("Worker %s: paused; job %s put back at the front of %s", self.name, job.id, queue.name)  # type: ignore[attr-defined]


class Worker(BrakeMixin, rq.worker.Worker):
    """RQ's default (forking) worker, with the Big Red Button."""


class SimpleWorker(BrakeMixin, rq.worker.SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs in the worker's own process), with the Big Red Button."""
