#!/usr/bin/env bash
# The Python SDK's tests (sdk/python/tests, pytest) against the real `brb` binary: the gate on a
# real control plane, small misbehaving servers of the tests' own for the bad-input cases, and
# the Celery and RQ integrations end to end with real workers on a real redis-server.
#
#   scripts/python-sdk-tests.sh                  (make test runs it after building target/debug/brb)
#   scripts/python-sdk-tests.sh --install-only   (make test-deps: just the virtualenv)
#   scripts/python-sdk-tests.sh -k bad_input     (extra arguments go to pytest)
#
# The SDK needs only the standard library; pytest, Celery, RQ and the Redis client come from
# PyPI, pinned with hashes (sdk/python/requirements-test.txt), into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(realpath -m "${PYTHON_SDK_VENV:-target/sdk-python-venv}")
REQ=sdk/python/requirements-test.txt
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "python-sdk-tests: installing $REQ into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$REQ"
  echo "$want" > "$VENV/.requirements.sha256"
fi
if [ "${1:-}" = --install-only ]; then
  exit 0
fi

BRB=$(realpath -m "${BRB_BIN:-target/debug/brb}")
[ -x "$BRB" ] || { echo "python-sdk-tests: $BRB is missing: cargo build -p brb first" >&2; exit 1; }
cd sdk/python
BRB_BIN="$BRB" PYTHONDONTWRITEBYTECODE=1 exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
