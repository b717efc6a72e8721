#!/usr/bin/env bash
# Installs the Debian packages a make target needs, only those missing. Idempotent: when every
# package is present it does nothing and needs no network.
#   scripts/ensure-packages.sh GROUP...
set -euo pipefail

declare -A PKG_GROUPS=(
  [base]="build-essential pkg-config curl ca-certificates git libudev-dev"
  # The office button: AVR toolchain and Arduino core (firmware/), simavr for the end-to-end
  # test of the real firmware. (libudev-dev, for hidapi and serialport, is in base.)
  [firmware]="gcc-avr avr-libc binutils-avr arduino-core-avr simavr libsimavr-dev libelf-dev"
  # Real peers the tests talk to: Prometheus scraping the control plane (and its promtool);
  # sqlite3 to check a database file; mkfs.ext4 and mount for the disk-full and failing-disk
  # fault tests; jq for the README's plain-HTTP worker recipe; python3-venv for schemathesis and
  # the OFREP provider test (tests/ofrep_providers.rs); ruby (3.1, with minitest and rake) for
  # the Ruby SDK, which uses no gem beyond Debian's; golang-go (1.19) for the Go SDK, which
  # uses the standard library only (no module proxy); ruby-sidekiq (6.4) with ruby-redis and
  # redis-server for the Ruby SDK's Sidekiq integration and its end-to-end test. The chaos test
  # (tests/chaos.rs): iproute2 for network namespaces, nftables for partitions, libfaketime
  # (and its faketime CLI) for clock skew.
  [test]="prometheus sqlite3 e2fsprogs mount jq python3-venv ruby ruby-minitest rake golang-go ruby-sidekiq ruby-redis redis-server iproute2 nftables libfaketime faketime"
  # The UI's browser tests: Debian's Chromium driven by Playwright (no browser download).
  [ui]="chromium fonts-dejavu-core"
  # The desktop app (Tauri 2) and its WebDriver tests under Xvfb; dbus, gnome-keyring and
  # libsecret-tools (secret-tool) for the keychain test against a real Secret Service.
  [desktop]="libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev webkit2gtk-driver xvfb xauth imagemagick dbus gnome-keyring libsecret-tools"
  # The tray, notification and shortcut e2e (ui/tests/tray.e2e.mjs): a private D-Bus session,
  # a real notification server, a key typed into the X server, Python's D-Bus for the panel.
  [desktop-session]="dbus-daemon dunst xdotool python3-dbus python3-gi"
  # A real PostgreSQL for the store suite and the multi-replica tests. Only the server binaries
  # are needed: the tests run a private cluster (initdb + pg_ctl on a loopback port in a temp
  # dir), never the system service.
  [postgres]="postgresql"
  # `make bench` and its end-to-end test: the Redis pub/sub baseline.
  [bench]="redis-server"
  # The Python SDK (sdk/python, standard library only), its pytest virtualenv, and the
  # redis-server its Celery and RQ end-to-end tests run.
  [sdk-python]="python3 python3-venv redis-server"
  # Profilers for the fan-out path (BENCHMARKS.md): perf, valgrind --tool=callgrind.
  [profile]="linux-perf valgrind"
)

want=()
for g in "$@"; do
  pkgs=${PKG_GROUPS[$g]:-}
  if [ -z "$pkgs" ]; then
    echo "ensure-packages: unknown group '$g'" >&2
    exit 2
  fi
  for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      want+=("$p")
    fi
  done
done

if [ ${#want[@]} -gt 0 ]; then
  echo "ensure-packages: installing ${want[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${want[@]}"
fi

if [[ " $* " == *" ui "* ]] && ! command -v npm >/dev/null 2>&1; then
  echo "ensure-packages: node and npm (Node.js >= 20.19) are needed for the UI; install them first" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "ensure-packages: cargo is not on PATH; install Rust (rustup, stable >= 1.85) first" >&2
  exit 1
fi
