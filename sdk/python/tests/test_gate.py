"""The gate against a real ``brb server``: state, changes, admission, ramps, reports, transports,
replicas, and a restart."""

from __future__ import annotations

import logging
import tempfile
import threading
import time

import pytest

from brb_client import ConfigError, FailurePolicy, Gate, GateConfig, TlsOptions, Transport

from conftest import BrbServer, wait_until


def gate(brb: BrbServer, token: str, **kw) -> Gate:
    kw.setdefault("backoff_base", 0.1)
    kw.setdefault("backoff_cap", 1.0)
    kw.setdefault("send_samples", False)
    return Gate(GateConfig(urls=kw.pop("urls", [brb.url]), token=token, **kw))


@pytest.fixture(autouse=True)
def running(brb: BrbServer) -> None:
    brb.set_state("running")


def test_follows_pause_and_resume_and_admits_accordingly(brb: BrbServer, token: str) -> None:
    with gate(brb, token, worker_id="py-follow") as g:
        assert g.ready(5)
        assert g.is_open() and g.is_connected() and g.staleness() == 0.0
        v = brb.set_state("paused")["version"]
        assert wait_until(lambda: not g.is_open(), 1.0), "the pause reached the gate within 1 s"
        assert g.version == v and g.status() == "paused" and g.admitted_fraction() == 0.0
        assert g.try_job() is None
        with pytest.raises(TimeoutError):
            with g.job(timeout=0.2):
                pytest.fail("admitted while paused")
        last = g.last_change()
        assert last is not None and last[0] == v
        opened = []
        waiter = threading.Thread(target=lambda: opened.append(g.wait_open(5)))
        waiter.start()
        brb.set_state("running")
        waiter.join(2)
        assert opened == [True]
        with g.job() as job:
            assert g.in_flight == 1
        assert g.in_flight == 0 and g.processed == 1
        job.done()  # a second done() counts nothing
        assert g.processed == 1


def test_draining_is_reported_until_the_job_ends(brb: BrbServer, token: str) -> None:
    with gate(brb, token, worker_id="py-drain", report_interval=0.5) as g:
        assert g.ready(5)
        job = g.try_job()
        assert job is not None
        v = brb.set_state("paused")["version"]
        assert wait_until(lambda: g.status() == "draining", 1.0)

        def worker(status):
            w = [x for x in brb.workers()["workers"] if x["worker_id"] == "py-drain"]
            return bool(w) and w[0]["status"] == status and w[0]["observed_version"] == v

        assert wait_until(lambda: worker("draining"), 3.0, every=0.05)
        job.done()
        assert wait_until(lambda: worker("paused"), 3.0, every=0.05)


def test_ramp_duty_cycle_admits_the_fraction(brb: BrbServer, token: str) -> None:
    with gate(brb, token, worker_id="py-ramp", max_concurrency=2) as g:
        assert g.ready(5)
        brb.set_state("paused")
        assert wait_until(lambda: not g.is_open(), 1.0)
        brb.set_state("running", ramp={"kind": "steps", "fractions": [0.25, 1.0], "duration_secs": 60})
        assert wait_until(g.is_open, 1.0)
        assert g.admitted_fraction() == pytest.approx(0.25)
        busy = [0.0]
        lock = threading.Lock()
        stop = time.monotonic() + 2.0

        def loop() -> None:
            while time.monotonic() < stop:
                try:
                    with g.job(timeout=max(0.0, stop - time.monotonic())):
                        t = time.monotonic()
                        time.sleep(0.02)
                        with lock:
                            busy[0] += time.monotonic() - t
                except TimeoutError:
                    return

        ts = [threading.Thread(target=loop) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        fraction = busy[0] / (2 * 2.0)
        assert 0.15 < fraction < 0.35, fraction


def test_long_poll_and_a_dead_replica_first(brb: BrbServer, token: str) -> None:
    dead = "http://127.0.0.1:1"
    with gate(brb, token, urls=[dead, brb.url], transport=Transport.LONG_POLL, long_poll_wait=2) as g:
        assert g.ready(5) and g.is_open()
        v = brb.set_state("paused")["version"]
        assert wait_until(lambda: g.version == v and not g.is_open(), 1.0)


def test_token_from_a_file_and_never_in_repr_or_logs(brb: BrbServer, token: str, tmp_path, caplog) -> None:
    f = tmp_path / "token"
    f.write_text(token + "\n")
    caplog.set_level(logging.DEBUG, logger="brb_client")
    with Gate(GateConfig(urls=[brb.url], token_file=str(f), backoff_base=0.1, send_samples=False)) as g:
        assert g.ready(5)
        brb.set_state("paused")
        assert wait_until(lambda: not g.is_open(), 1.0)
        assert token not in repr(g) and token not in repr(g._cfg) and token not in repr(g._connector)
    assert token not in caplog.text


def test_refuses_bad_configs() -> None:
    with pytest.raises(ConfigError):
        Gate(GateConfig(urls=[]))
    with pytest.raises(ConfigError, match="refusing plain HTTP"):
        Gate(GateConfig(urls=["http://10.0.0.5:7070"]))
    with pytest.raises(ConfigError):
        Gate(GateConfig(urls=["ftp://127.0.0.1"]))
    with pytest.raises(ConfigError):
        Gate(GateConfig(urls=["http://127.0.0.1:1"], max_concurrency=0))
    with pytest.raises(ConfigError, match="both"):
        Gate(GateConfig(urls=["https://127.0.0.1:1"], tls=TlsOptions(client_cert="/x.pem")))


def test_restart_keeps_last_known_then_open_policy_after_grace() -> None:
    with tempfile.TemporaryDirectory(prefix="brb-py-restart-") as d:
        s = BrbServer(d)
        port = s.url.rsplit(":", 1)[1]
        tok = s.viewer_token()
        s.set_state("paused")
        keep = gate(s, tok, worker_id="py-keep")
        fail_open = gate(s, tok, worker_id="py-open", policy=FailurePolicy.OPEN, grace=0.8)
        try:
            assert keep.ready(5) and fail_open.ready(5)
            assert not keep.is_open() and not fail_open.is_open()
            s.stop()
            down = time.monotonic()
            assert wait_until(lambda: not keep.is_connected(), 3.0)
            assert wait_until(fail_open.is_open, 3.0), "open after the grace period"
            assert time.monotonic() - down >= 0.7, "not before the grace period"
            assert not keep.is_open(), "keep_last_known: still paused"
            st = keep.staleness()
            assert st is not None and st > 0.5
            s = BrbServer(d, listen=f"127.0.0.1:{port}")
            assert wait_until(lambda: keep.is_connected() and fail_open.is_connected(), 5.0)
            assert wait_until(lambda: not fail_open.is_open(), 1.0)
            assert not keep.is_open()
        finally:
            keep.close()
            fail_open.close()
            s.stop()


def test_close_stops_every_thread(brb: BrbServer, token: str) -> None:
    before = threading.active_count()
    g = gate(brb, token, policy=FailurePolicy.CLOSED, send_samples=True)
    assert g.ready(5)
    assert threading.active_count() >= before + 3
    t = time.monotonic()
    g.close()
    assert time.monotonic() - t < 2.0
    assert wait_until(lambda: threading.active_count() == before, 2.0)


def test_a_pause_is_acknowledged_only_after_jobs_handed_on_began(brb: BrbServer, token: str) -> None:
    """``try_job(starting=True)``: the report of a pause waits for ``job.started()`` (or
    ``start_wait``), so a job handed to another process just before the pause cannot begin after
    the acknowledgement. What the job-system integrations build on."""
    reports: list = []
    with gate(brb, token, worker_id="py-starting", report_interval=60, start_wait=0.6,
              on_report=lambda body, sent_at: reports.append((body, sent_at))) as g:
        assert g.ready(5) and g.is_open()
        changes: list = []
        g.add_listener(lambda: changes.append(g.version))
        # Handed on, never said to have begun: the acknowledgement waits the whole start_wait.
        job = g.try_job(starting=True)
        assert job is not None
        v = brb.set_state("paused")["version"]
        assert wait_until(lambda: any(b["observed_version"] >= v for b, _ in reports), 5), "acknowledged"
        closed_at = g.last_change()[1] / 1e6
        body, sent_at = next((b, t) for b, t in reports if b["observed_version"] >= v)
        assert sent_at - closed_at >= 0.5, f"acknowledged {sent_at - closed_at:.3f} s after the close"
        assert (body["status"], body["in_flight"]) == ("draining", 1)
        assert v in changes, "listeners hear of each change"
        job.done()
        assert wait_until(
            lambda: any(w["worker_id"] == "py-starting" and w["status"] == "paused" for w in brb.workers()["workers"]), 5
        ), "reported paused when it ended"
        # Said to have begun: acknowledged right after, not before.
        v = brb.set_state("running")["version"]
        assert wait_until(lambda: g.is_open(), 5)
        job = g.try_job(starting=True)
        assert job is not None
        v = brb.set_state("paused")["version"]
        assert wait_until(lambda: not g.is_open(), 5)
        began = time.time()
        job.started()
        assert wait_until(lambda: any(b["observed_version"] >= v for b, _ in reports), 5), "acknowledged"
        body, sent_at = next((b, t) for b, t in reports if b["observed_version"] >= v)
        assert began <= sent_at < began + 0.5, (began, sent_at)
        job.done()


def test_wait_admissible_and_next_admission_follow_the_ramp(brb: BrbServer, token: str) -> None:
    with gate(brb, token, worker_id="py-admissible", reports=False) as g:
        assert g.ready(5)
        assert g.wait_admissible(1) and g.next_admission_in() == 0.0
        brb.set_state("paused")
        assert wait_until(lambda: not g.is_open(), 5)
        assert not g.wait_admissible(0.05) and g.next_admission_in() is None
        brb.set_state("running", ramp={"kind": "steps", "fractions": [0.1, 1.0], "duration_secs": 600})
        assert g.wait_admissible(5) and g.admitted_fraction() == pytest.approx(0.1)
        job = g.try_job()
        assert job is not None and g.next_admission_in() is None  # its one slot is busy
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.1:  # a job of 0.1 s (the work itself, not a wait)
            pass
        job.done()
        rest = g.next_admission_in()
        assert rest is not None and 0.7 <= rest <= 1.0, rest  # rests 0.1 * 0.9 / 0.1 = 0.9 s
        assert not g.wait_admissible(0.3)
        assert g.wait_admissible(2)
