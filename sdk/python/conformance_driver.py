#!/usr/bin/env python3
"""The Python SDK's conformance driver (sdk/conformance/PROTOCOL.md).

Reads one JSON command per line on stdin, answers one JSON line per command on stdout, and
drives ``brb_client.Gate`` through its public API only, as a worker would. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from brb_client import (  # noqa: E402
    BrbError,
    FailurePolicy,
    Gate,
    GateConfig,
    Job,
    TlsOptions,
    Transport,
)


def ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def config_from(c: Dict[str, Any], worker_id: Optional[str] = None) -> GateConfig:
    """Protocol config → GateConfig; a missing field keeps the SDK's default."""
    kw: Dict[str, Any] = {"urls": c["urls"], "switch": c["switch"]}
    if c.get("token") is not None:
        kw["token"] = c["token"]
    if c.get("token_file") is not None:
        kw["token_file"] = c["token_file"]
    if worker_id or c.get("worker_id"):
        kw["worker_id"] = worker_id or c["worker_id"]
    if c.get("policy") is not None:
        kw["policy"] = FailurePolicy(c["policy"])
    if c.get("transport") is not None:
        kw["transport"] = Transport(c["transport"])
    for key, attr in (
        ("grace_ms", "grace"),
        ("report_interval_ms", "report_interval"),
        ("backoff_base_ms", "backoff_base"),
        ("backoff_cap_ms", "backoff_cap"),
        ("idle_timeout_ms", "idle_timeout"),
    ):
        if c.get(key) is not None:
            kw[attr] = c[key] / 1000.0
    if c.get("max_concurrency") is not None:
        kw["max_concurrency"] = c["max_concurrency"]
    if c.get("reports") is not None:
        # `reports: false` is the benchmark's pure fan-out: no samples either (as `brb bench`).
        kw["reports"] = kw["send_samples"] = bool(c["reports"])
    kw["tls"] = TlsOptions(
        ca_file=c.get("ca_file"), client_cert=c.get("client_cert"), client_key=c.get("client_key")
    )
    return GateConfig(**kw)


class Driver:
    def __init__(self) -> None:
        self.gates: Dict[str, Gate] = {}
        self.jobs: Dict[str, Job] = {}
        self.fleet: List[Gate] = []
        self.slots: Dict[str, int] = {}

    def gate(self, cmd: Dict[str, Any]) -> Gate:
        g = self.gates.get(cmd.get("gate", ""))
        if g is None:
            raise KeyError(f"no gate {cmd.get('gate')!r}")
        return g

    def op_start(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        name = cmd["gate"]
        if name in self.gates:
            raise ValueError(f"gate {name!r} exists")
        cfg = config_from(cmd["config"])
        self.gates[name] = Gate(cfg)
        self.slots[name] = cfg.max_concurrency
        return {}

    def op_state(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        g = self.gate(cmd)
        st = g.staleness()
        return {
            "open": g.is_open(),
            "version": g.version,
            "connected": g.is_connected(),
            "staleness_ms": None if st is None else ms(st),
            "status": g.status(),
            "in_flight": g.in_flight,
            "processed": g.processed,
            "admitted_fraction": g.admitted_fraction(),
            "connects": g.connects,
            "connect_times": [ms(t) for t in g.connect_times()],
        }

    def op_wait_open(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        g = self.gate(cmd)
        t = time.monotonic()
        opened = g.wait_open(cmd.get("timeout_ms", 5000) / 1000.0)
        return {"opened": opened, "waited_ms": ms(time.monotonic() - t)}

    def op_work(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        g = self.gate(cmd)
        deadline = time.monotonic() + cmd["for_ms"] / 1000.0
        job_s = cmd.get("job_ms", 20) / 1000.0
        slots = self.slots[cmd["gate"]]
        done: List[List[int]] = []
        lock = threading.Lock()

        def worker() -> None:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    with g.job(timeout=left):
                        start = time.time()
                        time.sleep(job_s)
                        end = time.time()
                except TimeoutError:
                    return
                with lock:
                    done.append([ms(start), ms(end)])

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.sort()
        return {"jobs": done}

    def op_begin_job(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        g = self.gate(cmd)
        job = g.try_job()
        if job is not None:
            self.jobs[cmd["job"]] = job
        return {"admitted": job is not None}

    def op_end_job(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        job = self.jobs.pop(cmd["job"], None)
        if job is None:
            raise KeyError(f"no job {cmd['job']!r}")
        job.done()
        return {}

    def op_stop(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        g = self.gates.pop(cmd["gate"], None)
        if g is None:
            raise KeyError(f"no gate {cmd['gate']!r}")
        g.close()
        return {}

    def op_fleet_start(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        c = cmd["config"]
        prefix = c.get("worker_id") or "fleet"
        for n in range(cmd["count"]):
            self.fleet.append(Gate(config_from(c, worker_id=f"{prefix}-{n}")))
        return {}

    def op_fleet_ready(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        deadline = time.monotonic() + cmd.get("timeout_ms", 30000) / 1000.0
        ready = sum(1 for g in self.fleet if g.ready(max(0.0, deadline - time.monotonic())))
        return {"ready": ready}

    def op_fleet_seen(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        version = cmd["version"]
        deadline = time.monotonic() + cmd.get("timeout_ms", 5000) / 1000.0
        # Waiting only: each time comes from the SDK (`last_change`), recorded when it applied.
        # Checked every 20 ms: this thread takes the interpreter lock from the SDK's stream
        # reader each time it looks at a thousand gates.
        while time.monotonic() < deadline and any(g.version < version for g in self.fleet):
            time.sleep(0.02)
        seen = []
        for g in self.fleet:
            lc = g.last_change()
            if lc is not None and lc[0] >= version:
                seen.append(lc[1])
        return {"seen_us": seen, "missing": len(self.fleet) - len(seen)}

    def op_rss(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return {"rss_bytes": int(line.split()[1]) * 1024}
        raise RuntimeError("no VmRSS in /proc/self/status")

    def close(self) -> None:
        for g in list(self.gates.values()) + self.fleet:
            g.close(timeout=2.0)


def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("BRB_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    d = Driver()
    out = sys.stdout
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd_id = None
        try:
            cmd = json.loads(line)
            cmd_id = cmd.get("id")
            handler = getattr(d, "op_" + str(cmd.get("op")), None)
            if handler is None:
                answer = {"id": cmd_id, "ok": False, "error": f"unsupported: op {cmd.get('op')!r}"}
            else:
                answer = {"id": cmd_id, "ok": True, **handler(cmd)}
        except (BrbError, KeyError, ValueError, TypeError, OSError, RuntimeError) as e:
            answer = {"id": cmd_id, "ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(answer, separators=(",", ":")) + "\n")
        out.flush()
    d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
