"""Enqueues numbered jobs (0, 1, 2, ...): ``burst`` at once, then ``rate`` per second, until the
Redis key ``test:stop`` appears; then writes how many it enqueued to ``test:produced``. With a
rate of 0, the burst only (numbered from FIRST).

    producer.py celery|rq RATE BURST [FIRST]      (BRB_TEST_REDIS names the Redis)
"""

from __future__ import annotations

import os
import sys
import time

import redis


def main() -> None:
    kind, rate, burst = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    r = redis.Redis.from_url(os.environ["BRB_TEST_REDIS"])
    if kind == "celery":
        import celery_app

        def send(n: int) -> None:
            celery_app.job.delay(n)
    else:
        import rq
        import rq_jobs

        queue = rq.Queue("default", connection=r)

        def send(n: int) -> None:
            queue.enqueue(rq_jobs.job, n)

    n = first
    for _ in range(burst):
        send(n)
        n += 1
    if rate <= 0:
        return
    next_at = time.monotonic()
    while not r.exists("test:stop"):
        send(n)
        n += 1
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))  # pacing the load, not waiting for a result
    r.set("test:produced", n)


if __name__ == "__main__":
    main()
