"""The RQ side of the end-to-end test and the benchmark: a job of ``BRB_JOB_SECS`` that records
its start in Redis (``test:starts``, from the job's body; ``test:begun``, from the work horse as
it begins the job), and the worker class (``brb_client.rq.Worker``, recording its reports)."""

from __future__ import annotations

import json
import os
import time

import redis

import brb_client.rq
from brb_client import GateConfig

REDIS_URL = os.environ["BRB_TEST_REDIS"]
JOB_SECS = float(os.environ.get("BRB_JOB_SECS", "0.1"))
WORKER = os.environ.get("BRB_TEST_WORKER", "rq")
_r = redis.Redis.from_url(REDIS_URL)


def job(n: int) -> None:
    _r.rpush("test:starts", f"{n} {time.time():.6f} {WORKER}")
    time.sleep(JOB_SECS)


def _record_report(body: dict, sent_at: float) -> None:
    _r.rpush("test:reports", json.dumps({**body, "sent_at": sent_at}))


class RecordingWorker(brb_client.rq.Worker):
    """``brb_client.rq.Worker`` whose reports are also written to Redis for the test to read."""

    brb_config = GateConfig.from_env(worker_id=WORKER, report_interval=1.0, on_report=_record_report)

    def perform_job(self, job, queue):  # type: ignore[no-untyped-def]
        # In the work horse, before the brake's own start note: the instant the worker begins
        # the job, recorded before the worker can acknowledge a pause that follows.
        _r.rpush("test:begun", f"{job.args[0]} {time.time():.6f} {WORKER}")
        return super().perform_job(job, queue)
