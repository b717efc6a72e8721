#!/usr/bin/env python3
"""Press -> broker paused, for each broker adapter (`make bench-adapters`).

Starts a `brb server`, a `redis-server` and `brb adapter rq` and `brb adapter bullmq` (each on
loopback ports), then presses 10 times: a pause over the HTTP API, timed from just before the
request until the broker's own pause state is visible in Redis (`rq:suspended` exists; the
BullMQ queue's meta hash has `paused`), polled every 0.5 ms; then a resume, waited out the same
way. Prints p50 and max per adapter. The BullMQ queue is created as `new Queue(name)` creates
it (its meta hash); no worker is needed to see the flag.

usage: target/sdk-python-venv/bin/python scripts/bench-adapters.py [BRB_BIN]
(needs the `redis` package, which the Python SDK's test venv has: scripts/adapter-fixtures.sh rq)
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from redis import Redis

PRESSES = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, f, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"bench-adapters: {what}: not within {timeout} s")


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    brb = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "target", "debug", "brb")
    tmp = tempfile.mkdtemp(prefix="brb-bench-adapters-")
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--loglevel", "warning", "--dir", tmp],
            stdout=subprocess.DEVNULL))
        r = Redis(port=rport)
        wait("redis answers", lambda: _ping(r))
        r.hset("bull:bench:meta", "opts.maxLenEvents", 10000)

        server = subprocess.Popen(
            [brb, "server", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "data")],
            stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "server.log"), "w"), text=True)
        procs.append(server)
        url = None
        for line in server.stdout:
            if "listening on " in line:
                url = line.split("listening on ")[1].strip()
                break
        if not url:
            raise SystemExit("bench-adapters: brb server did not start")
        admin = open(os.path.join(tmp, "data", "admin-token")).read().strip()

        def api(method, path, body=None):
            req = urllib.request.Request(
                url + "/api/v1" + path, method=method,
                data=json.dumps(body).encode() if body is not None else None,
                headers={"Authorization": f"Bearer {admin}",
                         "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as res:
                return json.loads(res.read())

        tok = api("POST", "/tokens", {"name": "adapters", "role": "viewer",
                                      "scope": {"switches": ["workers"]}})
        tok_file = os.path.join(tmp, "adapter-token")
        with open(tok_file, "w") as f:
            f.write(tok["secret"])
        env = dict(os.environ, BRB_URL=url, BRB_TOKEN_FILE=tok_file, BRB_LOG="warn")
        redis_url = f"redis://127.0.0.1:{rport}/0"
        for args in (["rq"], ["bullmq", "--queue", "bench"]):
            procs.append(subprocess.Popen(
                [brb, "adapter", *args, "--redis", redis_url], env=env,
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"{args[0]}.log"), "w")))
        rq_paused = lambda: r.exists("rq:suspended") == 1
        bull_paused = lambda: r.hget("bull:bench:meta", "paused") is not None
        wait("both adapters report", lambda: api("GET", "/switches/workers/workers")["total"] == 2)

        times = {"rq": [], "bullmq": []}
        for _ in range(PRESSES):
            t0 = time.perf_counter()
            api("PUT", "/switches/workers/state", {"state": "paused", "source": "cli"})
            seen = {}
            while len(seen) < 2:
                now = time.perf_counter()
                if "rq" not in seen and rq_paused():
                    seen["rq"] = now - t0
                if "bullmq" not in seen and bull_paused():
                    seen["bullmq"] = now - t0
                if now - t0 > 30:
                    raise SystemExit(f"bench-adapters: not paused within 30 s: {seen}")
                time.sleep(0.0005)
            for k, v in seen.items():
                times[k].append(v * 1000)
            api("PUT", "/switches/workers/state", {"state": "running", "source": "cli"})
            wait("released", lambda: not rq_paused() and not bull_paused())
            time.sleep(0.2)

        print(f"press -> broker paused over {PRESSES} presses (loopback; ms)")
        print(f"{'adapter':<8} {'p50':>8} {'max':>8}")
        for k, v in times.items():
            print(f"{k:<8} {statistics.median(v):8.1f} {max(v):8.1f}")
        load = open("/proc/loadavg").read().split()[:3]
        print(f"load average during the run: {' '.join(load)} on {os.cpu_count()} cores")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _ping(r):
    try:
        return r.ping()
    except Exception:
        return False


if __name__ == "__main__":
    main()
