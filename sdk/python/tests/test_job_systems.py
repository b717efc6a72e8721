"""End to end, for Celery and for RQ: a real ``redis-server``, the real ``brb server`` and CLI,
two real worker processes with the Big Red Button wired in (``brb_client.celery.install`` /
``rq worker -w ...``), a producer enqueuing numbered jobs of 100 ms all along.

What must hold:

- ``brb pause`` prints ``paused · 2/2 workers acknowledged``;
- no job starts, on either worker, after that worker acknowledged the pause (its first report
  of the pause's version, timed just before it was sent) and before the release: no job is
  begun by the worker (Celery's ``task_prerun``, RQ's work horse entering ``perform_job``), and
  a job body that runs after the acknowledgement belongs to a job begun before it and counted
  in its in-flight figure;
- every worker reports the pause as ``draining`` with its in-flight count, or ``paused`` with 0,
  and ends ``paused``;
- after ``brb resume --ramp``, jobs started per second follow the ramp (see ``check_ramp``);
- every job enqueued runs exactly once.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Tuple

import pytest

from conftest import BrbServer, brb_bin
from jobsys import JobSystem, RedisServer, saturated_rate, wait_for

JOB_SECS = 0.1
# Per kind: the producer's steady rate (below the two workers' full speed, so a pause leaves a
# backlog that the ramp then works through), the burst that measures full speed, the backlog
# the pause must leave, and the ramp (its steps long enough that each holds a few job cycles
# even at 10 %).
PLAN = {
    "celery": dict(rate=12.0, burst=100, backlog=30, ramp="steps:16s"),
    "rq": dict(rate=3.0, burst=24, backlog=12, ramp="steps:24s"),
}


@pytest.fixture
def stack():
    with tempfile.TemporaryDirectory(prefix="brb-jobs-") as d:
        os.makedirs(os.path.join(d, "brb"))
        server = BrbServer(os.path.join(d, "brb"))
        red = RedisServer(d)
        made: List[JobSystem] = []

        def make(kind: str) -> JobSystem:
            js = JobSystem(kind, red, server.url, os.path.join(server.data_dir, "admin-token"),
                           server.viewer_token(f"{kind}-workers"), brb_bin(), d, job_secs=JOB_SECS)
            made.append(js)
            return js

        try:
            yield server, make
        finally:
            for js in made:
                js.kill_all()
            red.stop()
            server.stop()


def switch(server: BrbServer) -> dict:
    return server.api("GET", "/switches/workers")


def worker_states(server: BrbServer) -> Dict[str, Tuple[str, int, int]]:
    return {w["worker_id"]: (w["status"], w["observed_version"], w["in_flight"])
            for w in server.workers()["workers"] if not w["stale"]}


@pytest.mark.parametrize("kind", ["celery", "rq"])
def test_pause_stops_starts_and_resume_follows_the_ramp(stack, kind: str) -> None:
    server, make = stack
    plan = PLAN[kind]
    js = make(kind)
    names = ["w1", "w2"]
    for name in names:
        js.start_worker(name)
    try:
        wait_for(lambda: all(worker_states(server).get(n, ("",))[0] == "running" for n in names), 60,
                 "both workers to report running")
    except AssertionError:
        raise AssertionError("workers did not come up:\n" + "\n".join(js.log(n) for n in names)) from None

    # Full speed first: a burst the two workers work through, with the steady load behind it.
    burst = plan["burst"]
    js.start_producer(plan["rate"], burst)
    wait_for(lambda: js.start_count() >= burst + 5, 90, "the burst to be worked through")
    full = saturated_rate(js.starts(), 5, burst - 1)

    # The press, with jobs flowing.
    out = js.cli("pause", "--reason", f"{kind} e2e")
    assert "paused · 2/2 workers acknowledged" in out, out
    paused_v = switch(server)["version"]
    wait_for(lambda: all(worker_states(server).get(n, ("", 0))[:2] == ("paused", paused_v) for n in names), 30,
             "both workers to report paused")
    acks = {n: js.first_ack(n, paused_v) for n in names}
    for n in names:
        ack = acks[n]
        assert ack is not None, f"{n} never reported version {paused_v}"

    def late(key: str) -> List[Tuple[int, float, str]]:
        return [(n, t, w) for n, t, w in js.starts(key) if t > acks[w]["sent_at"]]

    # The producer goes on: wait until the pause has kept a backlog in the broker (or a job
    # began where none may).
    wait_for(lambda: late("test:begun") or js.backlog() >= plan["backlog"], 60, "a backlog to build up while paused")
    begun_late = late("test:begun")
    assert not begun_late, f"jobs begun after their worker acknowledged the pause: {begun_late[:5]} (acks {acks})"
    # A job's body runs a moment after the worker began it (a function call, or the scheduler
    # giving the CPU to the process the start note woke): a body may run after the
    # acknowledgement only for a job begun before it, and counted in its in-flight figure.
    begun = {(n, w): t for n, t, w in js.starts("test:begun")}
    body_late = late("test:starts")
    for n, t, w in body_late:
        assert begun.get((n, w), float("inf")) <= acks[w]["sent_at"], (
            f"job {n} ran on {w} at {t:.6f}, after the acknowledgement at {acks[w]['sent_at']:.6f}, "
            f"and was not begun before it (begun: {begun.get((n, w))})"
        )
    for w in names:
        assert sum(1 for _, _, x in body_late if x == w) <= acks[w]["in_flight"], (body_late, acks[w])
    for n in names:
        ack = acks[n]
        assert (ack["status"], ack["in_flight"] > 0) in {("draining", True), ("paused", False)}, ack
        later = [r for r in js.reports() if r["worker_id"] == n and r["observed_version"] >= paused_v]
        assert later[-1]["status"] == "paused" and later[-1]["in_flight"] == 0, later

    # The release, gradually.
    out = js.cli("resume", "--ramp", plan["ramp"])
    assert "running · 2/2 workers acknowledged" in out, out
    ramp = switch(server)["ramp"]
    assert ramp and ramp["kind"] == "steps", ramp
    check_ramp(js, ramp, full, slots=4 if kind == "celery" else 2)

    # Everything enqueued runs, once.
    produced = js.stop_producer()
    wait_for(lambda: js.start_count() >= produced, 60, f"all {produced} jobs to start")
    wait_for(lambda: all(worker_states(server).get(n, ("", 0, 1))[2] == 0 for n in names), 30,
             "the workers to finish their last jobs")
    js.stop_workers()
    numbers = sorted(n for n, _, _ in js.starts())
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not dupes, f"jobs run more than once: {dupes[:20]}"
    assert numbers == list(range(produced)), f"jobs missing: {sorted(set(range(produced)) - set(numbers))[:20]}"
    logs = [js.log(n, tail=None) for n in names]
    given_back = sum(t.count("put back at the front") + t.count("given back to the broker") for t in logs)
    print(f"{kind}: {produced} jobs, each run once; jobs given back to the broker at a pause (logged): {given_back}")


def ramp_windows(ramp: dict, full: float, slots: int) -> List[Tuple[float, float, float]]:
    """(from, to, expected starts per second) for each step of the ramp but the last (100 %),
    from the ramp's start and fractions as the control plane recorded them. Each window starts
    one job cycle of the previous step late: a slot that ended a job just before a step began
    rests as the previous step said."""
    from brb_client._switch import parse_rfc3339

    t0 = parse_rfc3339(ramp["started_at"])
    fractions = ramp["fractions"]
    step = ramp["duration_secs"] / (len(fractions) - 1)
    out = []
    for k, f in enumerate(fractions[:-1]):
        # A slot's cycle at full speed is slots/full seconds; at fraction f it is that over f.
        lag = 0.3 if k == 0 else (slots / full) / fractions[k - 1]
        out.append((t0 + k * step + lag, t0 + (k + 1) * step, f * full))
    return out


def check_ramp(js: JobSystem, ramp: dict, full: float, slots: int) -> None:
    """Jobs started in each step of the ramp, against the step's fraction of the full speed
    measured before the pause. Tolerance: the count may be off by one start per slot (where
    each slot's cycle falls against the window's edges) plus 35 % of the expected count (job
    lengths and dispatch delays on a loaded two-core machine). A worker that ignores the ramp
    starts at full speed, 10, 4 and 2 times these figures: far outside."""
    windows = ramp_windows(ramp, full, slots)
    end = windows[-1][1]
    wait_for(lambda: time.time() > end + 0.2, ramp["duration_secs"] + 30, "the ramp to pass its last step")
    starts = js.starts()
    rows = []
    for lo, hi, per_sec in windows:
        got = sum(1 for _, t, _ in starts if lo <= t < hi)
        want = per_sec * (hi - lo)
        rows.append((round(hi - lo, 2), round(want, 1), got))
        slack = slots + 0.35 * want
        # Above the step's share is what the brake forbids: held to the tolerance. Below it is
        # the cost of a job's start and rest that the duty cycle does not count (RQ forks per
        # job: on an idle machine its 50 % step started 34 of 57 expected), so the floor only
        # proves that the release happens.
        assert -max(slack, 0.6 * want) <= got - want <= slack, (
            f"{js.kind}: starts in a ramp step: {got}, expected {want:.1f} ± {slack:.1f} "
            f"(full speed {full:.1f}/s); every step (seconds, expected, got): {rows}"
        )
    print(f"{js.kind} ramp steps (seconds, expected, got): {rows}; full speed {full:.1f}/s")


def test_rq_worker_waiting_for_a_job_when_paused_gives_the_next_one_back(stack) -> None:
    """An idle RQ worker is blocked in Redis waiting for a job when the pause comes; the next
    job enqueued is handed to it all the same. It must put that job back, at the front of the
    queue, and run it once after the release."""
    server, make = stack
    js = make("rq")
    js.start_worker("w1")
    wait_for(lambda: worker_states(server).get("w1", ("",))[0] == "running", 60, "the worker to report running")
    out = js.cli("pause")
    assert "paused · 1/1 workers acknowledged" in out, out
    js.enqueue(1, first=7)
    wait_for(lambda: "put back at the front" in js.log("w1", tail=None), 30, "the worker to put the job back")
    assert js.backlog() == 1 and js.starts("test:begun") == [], "the job waits in the queue, not begun"
    js.cli("resume")
    wait_for(lambda: js.start_count() >= 1, 30, "the job to run after the release")
    wait_for(lambda: worker_states(server).get("w1", ("", 0, 1))[2] == 0, 30, "the job to end")
    js.stop_workers()
    assert [n for n, _, _ in js.starts()] == [7], js.starts()
