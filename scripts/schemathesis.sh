#!/usr/bin/env bash
# The OpenAPI document is the contract: runs schemathesis (property-based requests generated
# from /api/v1/openapi.json, every answer checked against it) against a real `brb server` on
# a loopback port. Fixed seed and a bounded number of examples per operation, so a run is
# repeatable and takes a minute or two. Exits non-zero on any failure.
#
#   scripts/schemathesis.sh            (make test runs it after building target/debug/brb)
#
# Schemathesis comes from PyPI at a pinned version, into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
BRB=${BRB_BIN:-target/debug/brb}
ROOT=$(pwd)
VENV=$(realpath -m "$VENV")
BRB=$(realpath -m "$BRB")
SEED=${SCHEMATHESIS_SEED:-1913}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-25}

if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "version $ST_VERSION"; then
  echo "schemathesis: installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
[ -x "$BRB" ] || { echo "schemathesis: $BRB is missing: cargo build -p brb first" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Long-polls answer within a second; the event streams (infinite by design) are left out
# below. The admin token comes from BRB_ADMIN_TOKEN, so no generated request can revoke it.
cat > "$work/brb.toml" <<TOML
[limits]
max_long_poll_secs = 1
TOML
token="brb_schemathesis_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
BRB_ADMIN_TOKEN="$token" BRB_CHANGES_PER_SEC=100000 BRB_CHANGES_BURST=100000 \
  BRB_AUTH_FAILURES_BURST=100000 BRB_LOG=warn \
  "$BRB" server --listen 127.0.0.1:0 --data-dir "$work/data" --config "$work/brb.toml" \
  > "$work/stdout" 2> "$work/stderr" &
pid=$!
url=
for _ in $(seq 300); do
  url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/stdout" | head -n1)
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/stderr" >&2; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "schemathesis: brb server did not start" >&2; cat "$work/stderr" >&2; exit 1; }
echo "schemathesis: $url, seed $SEED, at most $EXAMPLES examples per operation"

# Left out: the event streams, the API's two and OFREP's (an answer never ends;
# tests/bad_input.rs, the wire tests and crates/brb-server/tests/ofrep.rs cover them) and the Slack command (every request must carry Slack's HMAC signature,
# which generated requests cannot; tests/notify.rs and tests/slack_interactivity.rs cover them).
# From the temporary directory: schemathesis keeps a cache in the working directory.
cd "$work"
PYTHONPATH="$ROOT/scripts" SCHEMATHESIS_HOOKS=schemathesis_hooks \
  "$VENV/bin/st" run "$url/api/v1/openapi.json" \
  --checks all --seed "$SEED" --max-examples "$EXAMPLES" --workers 1 \
  --generation-database none --request-timeout 10 --no-color \
  --exclude-path-regex '/events$' --exclude-path /api/v1/slack/commands --exclude-path /api/v1/slack/interactions \
  -H "Authorization: Bearer $token"
