#!/usr/bin/env bash
# Installs the real, unmodified OpenFeature OFREP providers that tests/ofrep_providers.rs
# drives against a real `brb server`, pinned, from the package registries:
#
#   scripts/ofrep-providers.sh python   # tests/ofrep-python/requirements.txt (hashes checked)
#                                       # into target/ofrep-python-venv
#   scripts/ofrep-providers.sh node     # tests/ofrep-node/package-lock.json (npm ci)
#                                       # into tests/ofrep-node/node_modules
#   scripts/ofrep-providers.sh web      # the same for tests/ofrep-web (the browser provider,
#                                       # run in Debian's Chromium through playwright-core)
#
# Idempotent and quick when nothing changed (a stamp holds the pins it installed). Prints the
# interpreter or directory to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

case "${1:-}" in
  python)
    venv=${OFREP_PYTHON_VENV:-$root/target/ofrep-python-venv}
    req=$root/tests/ofrep-python/requirements.txt
    stamp=$venv/.brb-requirements
    if ! cmp -s "$req" "$stamp" 2>/dev/null || [ ! -x "$venv/bin/python" ]; then
      echo "ofrep-providers: installing the Python provider into $venv" >&2
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        --require-hashes -r "$req" >&2
      cp "$req" "$stamp"
    fi
    echo "$venv/bin/python"
    ;;
  node | web)
    dir=$root/tests/ofrep-$1
    stamp=$dir/node_modules/.brb-lock
    if ! cmp -s "$dir/package-lock.json" "$stamp" 2>/dev/null; then
      echo "ofrep-providers: installing the $1 provider into $dir/node_modules" >&2
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
      cp "$dir/package-lock.json" "$stamp"
    fi
    echo "$dir"
    ;;
  *)
    echo "usage: $0 python|node|web" >&2
    exit 2
    ;;
esac
