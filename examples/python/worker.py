#!/usr/bin/env python3
"""A background worker that obeys the Big Red Button (the Python SDK, sdk/python).

Run the control plane (`make run`), then from the repository root:

    BRB_TOKEN=$(cat ~/.local/share/big-red-button/admin-token) \\
      PYTHONPATH=sdk/python/src python3 examples/python/worker.py

and press the button (`brb pause`): the worker stops taking jobs within milliseconds, finishes
the ones in flight, and the control plane counts it paused; `brb resume --ramp steps:2m` brings
it back gradually. Ctrl-C stops it.

With the package installed (`pip install ./sdk/python`) PYTHONPATH is not needed. BRB_URL
(comma-separated replicas), BRB_TOKEN_FILE, BRB_CA_FILE, BRB_CLIENT_CERT/BRB_CLIENT_KEY are read
as by the `brb` CLI.
"""

from __future__ import annotations

import logging
import queue
import random
import signal
import threading
import time

from brb_client import Gate, GateConfig

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
log = logging.getLogger("worker")

# The job source: a queue a producer fills, standing in for Celery, RQ or a database table.
jobs: "queue.Queue[int]" = queue.Queue()
stop = threading.Event()


def produce() -> None:
    n = 0
    while not stop.is_set():
        n += 1
        jobs.put(n)
        time.sleep(random.uniform(0.01, 0.05))


def process(job: int) -> None:
    time.sleep(random.uniform(0.05, 0.15))  # the real work: a query, an email, a report


def work(gate: Gate) -> None:
    while not stop.is_set():
        try:
            # Blocks while the switch is paused, and rests the slot during a release ramp.
            # The job counts as in flight (the control plane sees "draining") until the
            # block ends.
            with gate.job(timeout=1.0):
                try:
                    job = jobs.get(timeout=0.5)
                except queue.Empty:
                    continue
                process(job)
        except TimeoutError:
            continue  # still paused: check `stop`, then wait again


def main() -> None:
    # Four jobs at once; token and URLs from the environment.
    gate = Gate(GateConfig.from_env(switch="workers", max_concurrency=4))
    if not gate.ready(10):
        log.warning("cannot reach the control plane yet; no job starts until it answers")
    log.info("worker %s started", gate.worker_id)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=produce, daemon=True)]
    threads += [threading.Thread(target=work, args=(gate,)) for _ in range(4)]
    for t in threads:
        t.start()
    last = None
    while not stop.wait(0.1):
        now = (gate.is_open(), round(gate.admitted_fraction() * 100))
        if now != last:
            log.info("open: %s, admitting %d%% of normal work (%d done)", now[0], now[1], gate.processed)
            last = now
    for t in threads[1:]:
        t.join()
    gate.close()
    log.info("stopped after %d jobs", gate.processed)


if __name__ == "__main__":
    main()
