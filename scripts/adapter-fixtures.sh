#!/usr/bin/env bash
# Installs the real job systems that tests/adapters.rs runs under `brb adapter`, pinned:
#
#   scripts/adapter-fixtures.sh rq       # RQ from sdk/python/requirements-test.txt (hashes
#                                        # checked) into target/sdk-python-venv
#   scripts/adapter-fixtures.sh bullmq   # tests/fixtures/bullmq-worker/package-lock.json
#                                        # (npm ci) into its node_modules
#
# Idempotent and quick when nothing changed. Prints the interpreter or directory to use on its
# last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

case "${1:-}" in
  rq)
    scripts/python-sdk-tests.sh --install-only >&2
    echo "$(realpath -m "${PYTHON_SDK_VENV:-target/sdk-python-venv}")/bin/python"
    ;;
  bullmq)
    dir=$root/tests/fixtures/bullmq-worker
    stamp=$dir/node_modules/.brb-lock
    if ! cmp -s "$dir/package-lock.json" "$stamp" 2>/dev/null; then
      echo "adapter-fixtures: installing BullMQ into $dir/node_modules" >&2
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
      cp "$dir/package-lock.json" "$stamp"
    fi
    echo "$dir"
    ;;
  *)
    echo "usage: $0 rq|bullmq" >&2
    exit 2
    ;;
esac
