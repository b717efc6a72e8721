"""Drives the real, unmodified OFREP provider for Python (openfeature-provider-ofrep on
openfeature-sdk) against a brb server, for tests/ofrep_providers.rs.

One JSON command per line on stdin, one JSON answer per line on stdout:
  {"op": "eval", "flag": "workers", "default": false, "token": "brb_...", "auth": "bearer"}
  -> {"value", "variant", "reason", "error_code", "error_message", "metadata", "ms"}
`auth` is "bearer" (Authorization: Bearer) or "api-key" (X-API-Key). The token goes through
the provider's own headers_factory, called before every evaluation. BRB_URL is the base URL.
"""

import json
import os
import socket
import sys
import time
from importlib.metadata import version

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext

headers: dict[str, str] = {}


def enum_text(v):
    return getattr(v, "value", v)


def main() -> None:
    api.set_provider(OFREPProvider(os.environ["BRB_URL"], headers_factory=lambda: dict(headers)))
    client = api.get_client()
    context = EvaluationContext(targeting_key=socket.gethostname(), attributes={"pid": os.getpid()})
    print(json.dumps({"ready": True, "provider": f"openfeature-provider-ofrep {version('openfeature-provider-ofrep')}",
                      "sdk": f"openfeature-sdk {version('openfeature-sdk')}"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return
        headers.clear()
        if cmd.get("auth") == "api-key":
            headers["X-API-Key"] = cmd["token"]
        else:
            headers["Authorization"] = f"Bearer {cmd['token']}"
        t = time.perf_counter()
        d = client.get_boolean_details(cmd["flag"], cmd["default"], context)
        ms = (time.perf_counter() - t) * 1000
        print(json.dumps({
            "value": d.value,
            "variant": d.variant,
            "reason": enum_text(d.reason),
            "error_code": enum_text(d.error_code),
            "error_message": d.error_message,
            "metadata": dict(d.flag_metadata),
            "ms": ms,
        }), flush=True)


if __name__ == "__main__":
    main()
