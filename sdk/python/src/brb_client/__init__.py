"""Big Red Button worker SDK for Python: pause every background worker with one press.

::

    from brb_client import Gate, GateConfig

    gate = Gate(GateConfig(urls=["https://brb.internal:7070"], switch="workers"))
    while True:
        with gate.job():          # blocks while paused; ramps after a release
            process(next_job())

Standard library only. See the repository's README, "Wire a Python worker in ten minutes".
"""

from ._http import ApiError, BrbError, ConfigError, ProtocolError, TlsOptions, Unreachable
from ._switch import Ramp
from .gate import FailurePolicy, Gate, GateConfig, Job, Transport, backoff, default_worker_id

__all__ = [
    "ApiError",
    "BrbError",
    "ConfigError",
    "FailurePolicy",
    "Gate",
    "GateConfig",
    "Job",
    "ProtocolError",
    "Ramp",
    "TlsOptions",
    "Transport",
    "Unreachable",
    "backoff",
    "default_worker_id",
]
