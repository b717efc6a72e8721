"""The Celery app of the end-to-end test and the benchmark: one task of ``BRB_JOB_SECS`` that
records its start in Redis (``test:starts``, from the task's body; ``test:begun``, from
``task_prerun``), and the Big Red Button wired in with one line."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, signals

import brb_client.celery
from brb_client import GateConfig

REDIS_URL = os.environ["BRB_TEST_REDIS"]
JOB_SECS = float(os.environ.get("BRB_JOB_SECS", "0.1"))
WORKER = os.environ.get("BRB_TEST_WORKER", "celery")
_r = redis.Redis.from_url(REDIS_URL)

app = Celery("brbtest", broker=REDIS_URL)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


def _record_report(body: dict, sent_at: float) -> None:
    _r.rpush("test:reports", json.dumps({**body, "sent_at": sent_at}))


@signals.task_prerun.connect(weak=False)
def _record_begun(task_id=None, task=None, args=None, **_) -> None:
    # Connected before `install`, so it runs before the brake's own start note: the instant the
    # worker begins the task, as Celery defines it (task_prerun), recorded before the worker can
    # acknowledge a pause that follows.
    _r.rpush("test:begun", f"{args[0]} {time.time():.6f} {WORKER}")


brb_client.celery.install(app, GateConfig.from_env(worker_id=WORKER, report_interval=1.0, on_report=_record_report))


@app.task(name="job")
def job(n: int) -> None:
    _r.rpush("test:starts", f"{n} {time.time():.6f} {WORKER}")
    time.sleep(JOB_SECS)
