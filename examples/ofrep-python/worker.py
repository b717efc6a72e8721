"""A background worker that takes no job while the Big Red Button is pressed, through
OpenFeature: the real OFREP provider, pointed at the control plane, evaluating the `workers`
switch as a boolean flag (true while work is allowed) before every job.

    pip install -r requirements.txt
    BRB_URL=http://127.0.0.1:7070 BRB_TOKEN_FILE=~/.local/share/big-red-button/admin-token \
        python worker.py

BRB_TOKEN (or BRB_TOKEN_FILE) is a token of any role; a viewer token made for the worker
(`brb token create my-worker --role viewer --switches workers`) is enough. MAX_JOBS stops the
loop after that many jobs (for a try-out; tests/ofrep_providers.rs runs it so).

OFREP readers do not report back: the control plane counts this process apart, as an
"unacknowledged" reader, not in "N/N workers paused". Workers that must be counted use an SDK.
"""

import os
import sys
import time
from pathlib import Path

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider

URL = os.environ.get("BRB_URL", "http://127.0.0.1:7070")
SWITCH = os.environ.get("BRB_SWITCH", "workers")
MAX_JOBS = int(os.environ.get("MAX_JOBS", "0"))  # 0: run until stopped


def token() -> str:
    if os.environ.get("BRB_TOKEN"):
        return os.environ["BRB_TOKEN"]
    if os.environ.get("BRB_TOKEN_FILE"):
        return Path(os.path.expanduser(os.environ["BRB_TOKEN_FILE"])).read_text().strip()
    sys.exit("set BRB_TOKEN or BRB_TOKEN_FILE")


TOKEN = token()  # read once; never printed
api.set_provider(OFREPProvider(URL, headers_factory=lambda: {"Authorization": f"Bearer {TOKEN}"}))
flags = api.get_client()
last_known: bool | None = None


def work_allowed() -> bool:
    """True while the switch allows work. When the control plane cannot answer, the last answer
    stands (an outage must not undo a pause); before any answer, no work (fail closed)."""
    global last_known
    d = flags.get_boolean_details(SWITCH, False)
    if d.error_code is None:
        last_known = d.value
        return d.value
    print(f"cannot ask the control plane ({d.error_code.value}: {d.error_message}); "
          f"keeping {'the last answer' if last_known is not None else 'no work'}", flush=True)
    return bool(last_known)


def process(job: int) -> None:
    time.sleep(0.05)  # your job here


def main() -> None:
    done = 0
    waiting = False
    while MAX_JOBS == 0 or done < MAX_JOBS:
        if not work_allowed():
            if not waiting:
                print(f"{SWITCH} is paused: taking no job", flush=True)
                waiting = True
            time.sleep(0.5)  # ask again soon: a resume is seen on the next ask
            continue
        waiting = False
        done += 1
        process(done)
        print(f"job {done} done", flush=True)


if __name__ == "__main__":
    main()
