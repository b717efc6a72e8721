"""Real job systems around a real control plane, for the end-to-end tests and the benchmark:
a ``redis-server`` on a loopback port picked here, worker processes of Celery (prefork pool) or
RQ (forking worker) with the Big Red Button wired in, a producer process enqueuing numbered
jobs, and the ``brb`` CLI. Every job records its start (number, Unix time, worker) in a Redis
list; every report a worker's gate had accepted is recorded there too (``on_report``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import redis

HERE = Path(__file__).resolve().parent
APPS = HERE / "jobapps"
SRC = HERE.parent / "src"

QUEUE_KEY = {"celery": "celery", "rq": "rq:queue:default"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str, every: float = 0.02):
    """Polls ``cond`` until it answers something truthy; fails with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class RedisServer:
    """``redis-server`` (Debian's) on a free loopback port, no persistence."""

    def __init__(self, data_dir: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-packages.sh sdk-python installs it)")
        last = ""
        for _ in range(5):  # the port picked may be taken before redis binds it: pick again
            self.port = free_port()
            self.log_path = os.path.join(data_dir, f"redis-{self.port}.log")
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", data_dir, "--logfile", self.log_path],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.client = redis.Redis.from_url(self.url)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            self.stop()
            last = Path(self.log_path).read_text() if os.path.exists(self.log_path) else ""
        raise RuntimeError(f"redis-server did not start; its log:\n{last}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class JobSystem:
    """Workers and a producer of one kind (``celery`` or ``rq``) on one Redis and one brb server."""

    def __init__(self, kind: str, redis_server: RedisServer, brb_url: str, admin_token_file: str,
                 worker_token: str, brb_bin: str, log_dir: str, job_secs: float = 0.1) -> None:
        assert kind in QUEUE_KEY
        self.kind = kind
        self.redis = redis_server
        self.r = redis_server.client
        self.brb_url = brb_url
        self.admin_token_file = admin_token_file
        self.brb_bin = brb_bin
        self.log_dir = log_dir
        self.workers: Dict[str, subprocess.Popen] = {}
        self.producer: Optional[subprocess.Popen] = None
        self.env = dict(os.environ)
        for k in ("BRB_TOKEN", "BRB_TOKEN_FILE", "BRB_SWITCH"):
            self.env.pop(k, None)
        self.env.update(
            BRB_URL=brb_url,
            BRB_TOKEN=worker_token,
            BRB_TEST_REDIS=redis_server.url,
            BRB_JOB_SECS=str(job_secs),
            PYTHONPATH=os.pathsep.join([str(SRC), str(APPS)]),
            PYTHONDONTWRITEBYTECODE="1",
        )

    # ----- processes -----

    def start_worker(self, name: str) -> None:
        env = dict(self.env, BRB_TEST_WORKER=name)
        if self.kind == "celery":
            cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
                   "--concurrency", "2", "--hostname", f"{name}@%h", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        else:
            cmd = [sys.executable, "-m", "rq.cli", "worker", "--url", self.redis.url,
                   "--worker-class", "rq_jobs.RecordingWorker", "--name", name]
        log = open(os.path.join(self.log_dir, f"{self.kind}-{name}.log"), "ab")
        self.workers[name] = subprocess.Popen(cmd, cwd=APPS, env=env, stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_producer(self, rate: float, burst: int = 0) -> None:
        log = open(os.path.join(self.log_dir, f"{self.kind}-producer.log"), "ab")
        self.producer = subprocess.Popen(
            [sys.executable, str(APPS / "producer.py"), self.kind, str(rate), str(burst)],
            cwd=APPS, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def enqueue(self, count: int, first: int = 1_000_000) -> None:
        """Enqueues ``count`` jobs at once (numbered from ``first``) and returns when they are."""
        out = subprocess.run([sys.executable, str(APPS / "producer.py"), self.kind, "0", str(count), str(first)],
                             cwd=APPS, env=self.env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"enqueueing failed: {out.stdout}{out.stderr}"

    def stop_producer(self, timeout: float = 30) -> int:
        """Stops the producer; answers how many jobs it enqueued (numbered 0..n-1)."""
        self.r.set("test:stop", "1")
        assert self.producer is not None
        self.producer.wait(timeout)
        assert self.producer.returncode == 0, f"the producer failed: {self.log('producer')}"
        return int(self.r.get("test:produced"))

    def stop_workers(self, timeout: float = 30) -> None:
        """A warm shutdown of every worker (SIGTERM), then waits for them to exit."""
        for p in self.workers.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in self.workers.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                raise AssertionError(f"worker {name} did not stop on SIGTERM; its log:\n{self.log(name)}")

    def kill_all(self) -> None:
        """Whatever still runs (a failed test): workers with their pool children, the producer."""
        for p in self.workers.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self.producer is not None and self.producer.poll() is None:
            self.producer.kill()
            self.producer.wait()

    def log(self, name: str, tail: Optional[int] = 6000) -> str:
        path = os.path.join(self.log_dir, f"{self.kind}-{name}.log")
        text = Path(path).read_text(errors="replace") if os.path.exists(path) else ""
        return text[-tail:] if tail else text

    # ----- the control plane -----

    def cli(self, *args: str) -> str:
        env = dict(os.environ, BRB_URL=self.brb_url, BRB_TOKEN_FILE=self.admin_token_file)
        env.pop("BRB_TOKEN", None)
        out = subprocess.run([self.brb_bin, *args], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"brb {' '.join(args)} failed: {out.stdout}{out.stderr}"
        return out.stdout

    # ----- what happened -----

    def starts(self, key: str = "test:starts") -> List[Tuple[int, float, str]]:
        """Job starts as (number, Unix time, worker): from the jobs' bodies, or with
        ``key="test:begun"`` as the workers began them (Celery's ``task_prerun``, RQ's work horse
        entering ``perform_job``)."""
        out = []
        for raw in self.r.lrange(key, 0, -1):
            n, t, w = raw.decode().split(" ")
            out.append((int(n), float(t), w))
        return out

    def start_count(self) -> int:
        return int(self.r.llen("test:starts"))

    def reports(self) -> List[dict]:
        return [json.loads(x) for x in self.r.lrange("test:reports", 0, -1)]

    def backlog(self) -> int:
        return int(self.r.llen(QUEUE_KEY[self.kind]))

    def first_ack(self, worker: str, version: int) -> Optional[dict]:
        """The worker's first accepted report of ``version`` or later: its acknowledgement,
        with ``sent_at`` the Unix time just before it was sent."""
        for rep in self.reports():
            if rep["worker_id"] == worker and rep["observed_version"] >= version:
                return rep
        return None


def saturated_rate(starts: List[Tuple[int, float, str]], first: int, last: int) -> float:
    """Jobs started per second between the start of job ``first`` and that of job ``last``
    (numbers), counting every start in between: the workers' full speed while a backlog lasts."""
    at = {n: t for n, t, _ in starts}
    t0, t1 = at[first], at[last]
    count = sum(1 for _, t, _ in starts if t0 <= t <= t1)
    return (count - 1) / (t1 - t0)
