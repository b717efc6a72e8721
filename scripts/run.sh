#!/usr/bin/env bash
# `make run`: the control plane on SQLite with the demo workload; the desktop app too when a
# display exists, else the web console's URL (printed by the server) is the way in.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${BRB_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/big-red-button}"
LISTEN="${BRB_LISTEN:-127.0.0.1:7070}"
# The binary `make build` made; the README walkthrough's test (tests/readme_walkthrough.rs)
# points it at the binary under test.
BRB="${BRB_BIN:-./target/debug/brb}"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ -x target/debug/brb-desktop ]; then
  "$BRB" server --demo --listen "$LISTEN" --data-dir "$DATA" "$@" &
  server=$!
  trap 'kill "$server" 2>/dev/null || true' EXIT INT TERM
  for _ in $(seq 100); do
    curl -sf "http://$LISTEN/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "Starting the desktop app (close its window: it stays in the tray; Quit from the tray menu)."
  BRB_URL="http://$LISTEN" BRB_TOKEN_FILE="$DATA/admin-token" ./target/debug/brb-desktop || true
else
  echo "No display: open the web console link below in a browser."
  exec "$BRB" server --demo --listen "$LISTEN" --data-dir "$DATA" "$@"
fi
