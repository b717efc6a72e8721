"""Figures for BENCHMARKS.md, "Job systems": Celery and RQ with the Big Red Button, each with two
worker processes (Celery: prefork pool of 2 each; RQ: the forking worker) on a real
``redis-server``, against a real ``brb server``, jobs of 100 ms.

For each job system it prints:

- press -> last job start: over 10 presses made while the workers are saturated (a backlog in
  the broker), the time from the press (the switch's ``changed_at``, the control plane's commit)
  to the last job start recorded after it (0 when no job started after the press), p50 and max;
- the release curve: the same backlog released at once, then with ``--ramp steps:1m``: jobs
  started per second in 5-second buckets from the release.

    make bench-jobs-python          (or: target/sdk-python-venv/bin/python sdk/python/bench/jobs.py)

``BRB_BIN`` names the ``brb`` binary (default ``target/debug/brb``). Takes about six minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))

from brb_client._switch import parse_rfc3339  # noqa: E402
from conftest import BrbServer, brb_bin  # noqa: E402
from jobsys import JobSystem, RedisServer, wait_for  # noqa: E402

SETUP = {
    # steady producer rate (jobs/s) while pressing; backlog kept before each press; backlog
    # released for the release curves
    "celery": dict(rate=60.0, keep=40, release_backlog=900),
    "rq": dict(rate=15.0, keep=15, release_backlog=240),
}
BUCKET = 5.0


def workers_state(server: BrbServer) -> Dict[str, Tuple[str, int, int]]:
    return {w["worker_id"]: (w["status"], w["observed_version"], w["in_flight"])
            for w in server.workers()["workers"] if not w["stale"]}


def all_in(server: BrbServer, names: List[str], status: str, version: int) -> bool:
    st = workers_state(server)
    return all(st.get(n, ("", 0, 0))[:2] == (status, version) for n in names)


def switch(server: BrbServer) -> dict:
    return server.api("GET", "/switches/workers")


def presses(js: JobSystem, server: BrbServer, names: List[str], keep: int, n: int) -> List[float]:
    out = []
    for _ in range(n):
        # Saturated: a backlog in the broker, so every slot starts a job as soon as it frees.
        wait_for(lambda: js.backlog() >= keep, 120, "a backlog before the press")
        js.cli("pause", "--wait", "10")
        sw = switch(server)
        pressed = parse_rfc3339(sw["changed_at"])
        wait_for(lambda: all_in(server, names, "paused", sw["version"]), 30, "both workers paused")
        # Watch one more second for a straggler (none is expected: the report came after).
        seen_until = time.time() + 1.0
        wait_for(lambda: time.time() >= seen_until, 5, "the watch second")
        after = [t for _, t, _ in js.starts() if t >= pressed]
        out.append(max(after) - pressed if after else 0.0)
        js.cli("resume", "--wait", "10")
        wait_for(lambda: all_in(server, names, "running", switch(server)["version"]), 30, "both workers running")
    return out


def release_curve(js: JobSystem, server: BrbServer, names: List[str], backlog: int, ramp: str, span: float) -> List[float]:
    """Pauses, enqueues ``backlog`` jobs, releases (``ramp`` or at once): starts per second in
    each bucket of ``span`` seconds from the release."""
    js.cli("pause", "--wait", "10")
    v = switch(server)["version"]
    wait_for(lambda: all_in(server, names, "paused", v), 60, "both workers paused")
    js.enqueue(backlog)
    args = ["resume", "--wait", "10"] + (["--ramp", ramp] if ramp else [])
    js.cli(*args)
    released = parse_rfc3339(switch(server)["changed_at"])
    wait_for(lambda: time.time() >= released + span + 0.5, span + 60, "the release span")
    starts = [t - released for _, t, _ in js.starts() if t >= released]
    buckets = [0] * int(span / BUCKET)
    for t in starts:
        i = int(t // BUCKET)
        if i < len(buckets):
            buckets[i] += 1
    # Let the rest of the backlog drain before the next measure.
    wait_for(lambda: js.backlog() == 0 and all(s[2] == 0 for s in workers_state(server).values()), 300,
             "the backlog to drain")
    return [b / BUCKET for b in buckets]


def run(kind: str, d: str, n_presses: int, span: float) -> dict:
    os.makedirs(os.path.join(d, kind, "brb"))
    server = BrbServer(os.path.join(d, kind, "brb"))
    red = RedisServer(os.path.join(d, kind))
    js = JobSystem(kind, red, server.url, os.path.join(server.data_dir, "admin-token"),
                   server.viewer_token(f"{kind}-bench"), brb_bin(), os.path.join(d, kind), job_secs=0.1)
    names = ["w1", "w2"]
    try:
        for name in names:
            js.start_worker(name)
        wait_for(lambda: all_in(server, names, "running", switch(server)["version"]), 90, "workers up")
        setup = SETUP[kind]
        js.start_producer(setup["rate"], 0)
        lags = presses(js, server, names, setup["keep"], n_presses)
        js.stop_producer()
        js.r.delete("test:stop")
        wait_for(lambda: js.backlog() == 0 and all(s[2] == 0 for s in workers_state(server).values()), 300,
                 "the backlog to drain")
        at_once = release_curve(js, server, names, setup["release_backlog"], "", span)
        ramped = release_curve(js, server, names, setup["release_backlog"], "steps:1m", span)
        js.stop_workers()
        return dict(lags=lags, at_once=at_once, ramped=ramped)
    finally:
        js.kill_all()
        red.stop()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["celery", "rq"])
    ap.add_argument("--presses", type=int, default=10)
    ap.add_argument("--span", type=float, default=70.0, help="seconds of release curve")
    a = ap.parse_args()
    kinds = [a.only] if a.only else ["celery", "rq"]
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="brb-bench-jobs-") as d:
        for kind in kinds:
            r = run(kind, d, a.presses, a.span)
            lags = sorted(x * 1000 for x in r["lags"])
            print(f"\n## {kind}")
            print(f"press -> last job start over {len(lags)} presses: p50 {statistics.median(lags):.1f} ms, "
                  f"max {max(lags):.1f} ms (each: {', '.join(f'{x:.1f}' for x in lags)})")
            print("\n| seconds after release | at once (jobs/s) | --ramp steps:1m (jobs/s) |")
            print("| --- | ---: | ---: |")
            for i, (x, y) in enumerate(zip(r["at_once"], r["ramped"])):
                print(f"| {i * BUCKET:.0f}-{(i + 1) * BUCKET:.0f} | {x:.1f} | {y:.1f} |")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


if __name__ == "__main__":
    main()
