"""Reading what the control plane says about a switch, trusting none of it.

A switch arrives as JSON (an SSE ``switch`` event, a long-poll answer, a report's answer).
:func:`parse_switch` turns it into a :class:`SwitchView` or raises :class:`BadSwitch`; the gate
never acts on anything this module did not accept, so garbage cannot flip a worker.
"""

from __future__ import annotations

import json
import math
import re

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional, Sequence

MAX_RAMP_SECS = 86_400
MAX_RAMP_STEPS = 20


class BadSwitch(ValueError):
    """The JSON is not a switch this gate can act on."""


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(s: str) -> float:
    """Unix seconds of an RFC 3339 timestamp (any number of fraction digits)."""
    m = _RFC3339.match(s) if isinstance(s, str) else None
    if not m:
        raise BadSwitch(f"not an RFC 3339 timestamp: {s!r:.60}")
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    frac = float(m.group(7)) if m.group(7) else 0.0
    tz = m.group(8)
    if tz in ("Z", "z"):
        offset = timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        offset = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    try:
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=offset)
    except ValueError as e:
        raise BadSwitch(f"not a valid instant: {s!r:.60}: {e}") from None
    return dt.timestamp() + frac


@dataclass(frozen=True)
class Ramp:
    """A gradual release in progress; every gate computes the same fraction from it."""

    started_at: float  # Unix seconds
    duration_secs: int
    kind: str  # "steps" | "linear"
    fractions: Sequence[float] = ()
    start_from: float = 0.0

    def fraction_at(self, now: float) -> float:
        """The fraction of normal work admitted at ``now`` (Unix seconds), as the Rust
        ``Ramp::fraction_at``: the first fraction before the start, exactly 1 at the end."""
        elapsed = max(0.0, now - self.started_at)
        total = float(max(1, self.duration_secs))
        if elapsed >= total:
            return 1.0
        if self.kind == "linear":
            f = self.start_from + (1.0 - self.start_from) * (elapsed / total)
        else:
            n = len(self.fractions)
            if n < 2:
                return 1.0
            step = total / (n - 1)
            f = self.fractions[min(int(elapsed // step), n - 1)]
        return min(1.0, max(0.0, f))


@dataclass(frozen=True)
class SwitchView:
    name: str
    state: str  # "running" | "paused"
    version: int
    changed_by: str
    source: str
    ramp: Optional[Ramp]


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadSwitch(f"a ramp fraction that is not a number: {v!r:.40}")
    f = float(v)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise BadSwitch(f"a ramp fraction outside (0, 1]: {f}")
    return f


def parse_ramp(r: Any) -> Optional[Ramp]:
    if r is None:
        return None
    if not isinstance(r, dict):
        raise BadSwitch("a ramp that is not an object")
    d = r.get("duration_secs")
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_RAMP_SECS:
        raise BadSwitch(f"a ramp duration outside 1..{MAX_RAMP_SECS}: {d!r:.40}")
    started = parse_rfc3339(r.get("started_at"))
    kind = r.get("kind")
    if kind == "steps":
        fr = r.get("fractions")
        if not isinstance(fr, list) or not 2 <= len(fr) <= MAX_RAMP_STEPS:
            raise BadSwitch("a stepped ramp without 2 to 20 fractions")
        fractions = tuple(_fraction(f) for f in fr)
        if any(b < a for a, b in zip(fractions, fractions[1:])):
            raise BadSwitch("a stepped ramp whose fractions decrease")
        return Ramp(started, d, "steps", fractions=fractions)
    if kind == "linear":
        return Ramp(started, d, "linear", start_from=_fraction(r.get("from")))
    raise BadSwitch(f"an unknown ramp kind: {kind!r:.40}")


def parse_switch(data: Any, expected_name: str) -> SwitchView:
    """Validates a switch (text or an already decoded object) for the gate of ``expected_name``."""
    return check_name(decode_switch(data), expected_name)


def check_name(sw: SwitchView, expected_name: str) -> SwitchView:
    if sw.name != expected_name:
        raise BadSwitch(f"a switch named {sw.name!r:.60}, not {expected_name!r}")
    return sw


def decode_switch(data: Any) -> SwitchView:
    """Validates a switch (text or an already decoded object), whatever its name: the gates of
    a process may share the result, each checking the name (:func:`check_name`)."""
    if isinstance(data, (str, bytes, bytearray)):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise BadSwitch(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadSwitch("not a JSON object")
    name = data.get("name")
    if not isinstance(name, str):
        raise BadSwitch(f"a switch named {name!r:.60}")
    state = data.get("state")
    if state not in ("running", "paused"):
        raise BadSwitch(f"an unknown state {state!r:.40}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
        raise BadSwitch(f"a version that is not a non-negative integer: {version!r:.40}")
    changed_by = data.get("changed_by", "")
    source = data.get("source", "")
    ramp = parse_ramp(data.get("ramp")) if state == "running" else None
    return SwitchView(
        name=name,
        state=state,
        version=version,
        changed_by=changed_by if isinstance(changed_by, str) else "",
        source=source if isinstance(source, str) else "",
        ramp=ramp,
    )


