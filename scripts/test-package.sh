#!/usr/bin/env bash
# `make test-package`: installs what `make package` built on this machine, runs it, removes it.
#   1. dpkg -i both .deb packages (the server/CLI and the desktop app);
#   2. checks the unit with `systemd-analyze verify`, the brb user, modes of config and data;
#   3. starts the server the way the unit does (systemd is not PID 1 here): the unit's own
#      ExecStart line, as its User/Group, with its EnvironmentFile, WorkingDirectory, UMask and
#      LimitNOFILE, no capabilities and no new privileges; checks it answers (healthz, the
#      installed CLI with the admin token the server minted in /var/lib/brb);
#   4. runs the installed desktop binary under Xvfb until its window shows the state;
#   5. purges both packages and checks nothing they installed or created is left.
# Needs root (dpkg). Refuses to touch a machine where either package was already installed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pkg=${CARGO_TARGET_DIR:-$root/target}/package
work=$(mktemp -d "${TMPDIR:-/tmp}/brb-test-package.XXXXXX")
server_deb=$(ls "$pkg"/brb_*.deb)
desktop_deb=$(ls "$pkg"/big-red-button_*.deb)
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
step() { echo "test-package: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
for p in brb big-red-button; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -qv "not-installed"; then
    fail "package $p is already on this machine; this test installs and purges it, so it will not run here"
  fi
done
(cd "$pkg" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match the packages"

server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if dpkg-query -W brb big-red-button >/dev/null 2>&1; then dpkg --purge big-red-button brb >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "installing $(basename "$server_deb") and $(basename "$desktop_deb")"
dpkg -i "$server_deb" "$desktop_deb" > "$work/dpkg-install.log" 2>&1 || { cat "$work/dpkg-install.log" >&2; fail "dpkg -i"; }
dpkg-query -L brb big-red-button | sort -u > "$work/files"

unit=/lib/systemd/system/brb.service
[ -f "$unit" ] || fail "no $unit"
systemd-analyze verify "$unit" > "$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify $unit"; }
# verify prints problems it does not count as errors too (unknown keys, bad paths): none allowed.
if [ -s "$work/verify.log" ]; then cat "$work/verify.log" >&2; fail "systemd-analyze verify complained"; fi
step "unit verified by systemd-analyze"

unit_value() { sed -n "s/^$1=//p" "$unit" | tail -1; }
user=$(unit_value User)
group=$(unit_value Group)
exec_start=$(unit_value ExecStart)
workdir=$(unit_value WorkingDirectory)
umask_value=$(unit_value UMask)
nofile=$(unit_value LimitNOFILE)
envfile=$(unit_value EnvironmentFile)
envfile=${envfile#-}
[ -n "$user" ] && [ -n "$exec_start" ] || fail "the unit names no User or ExecStart"
getent passwd "$user" >/dev/null || fail "postinst did not create the user $user"
[ "$(getent passwd "$user" | cut -d: -f7)" = /usr/sbin/nologin ] || fail "$user has a login shell"
[ "$(stat -c '%U:%G %a' /var/lib/brb)" = "$user:$group 750" ] || fail "/var/lib/brb is $(stat -c '%U:%G %a' /var/lib/brb)"
[ "$(stat -c '%U:%G %a' /etc/brb/brb.toml)" = "root:$group 640" ] || fail "/etc/brb/brb.toml is $(stat -c '%U:%G %a' /etc/brb/brb.toml)"
step "user $user, /var/lib/brb and /etc/brb/brb.toml as the unit needs them"

# The unit's environment file is where an operator overrides settings: here, a port the OS
# picks (the packaged config says 127.0.0.1:7070, which another process may hold).
printf 'BRB_LISTEN=127.0.0.1:0\nBRB_LOG_FORMAT=human\n' > "$envfile"
chown "root:$group" "$envfile"
chmod 0640 "$envfile"
# systemd (PID 1, with every capability) grants LimitNOFILE whatever this shell's hard limit
# is; a container without CAP_SYS_RESOURCE cannot raise it past its own. Then the server runs
# with the hard limit it has, and the test says so.
if ! prlimit --nofile="$nofile:$nofile" true 2>/dev/null; then
  step "note: this machine cannot raise the file limit to $nofile (hard limit $(ulimit -Hn), no CAP_SYS_RESOURCE); using $(ulimit -Hn)"
  nofile=$(ulimit -Hn)
fi
step "starting: $exec_start (as $user, LimitNOFILE=$nofile, UMask=$umask_value)"
# What systemd would do, short of namespaces: the unit's user and group, no capabilities at
# all, no new privileges, its working directory, umask, file limit and environment file.
# shellcheck disable=SC2086
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin $(grep -v '^#' "$envfile") \
  prlimit --nofile="$nofile:$nofile" \
  setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all \
  bash -c "umask $umask_value && cd '$workdir' && exec $exec_start" \
  > "$work/server.out" 2> "$work/server.err" &
server_pid=$!
url=
for _ in $(seq 1 300); do
  url=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$work/server.out" | head -1)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; fail "the server exited"; }
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/server.err" >&2; fail "the server did not say where it listens"; }
# env, prlimit, setpriv and bash each exec the next: the pid is the server's own.
[ "$(readlink "/proc/$server_pid/exe")" = /usr/bin/brb ] || fail "pid $server_pid is $(readlink "/proc/$server_pid/exe")"
[ "$(stat -c %U "/proc/$server_pid")" = "$user" ] || fail "the server does not run as $user"
grep -q '^CapEff:[[:space:]]*0*$' "/proc/$server_pid/status" || fail "the server holds capabilities"
grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$server_pid/status" || fail "the server may gain privileges"
[ "$(awk '/Max open files/{print $4}' "/proc/$server_pid/limits")" = "$nofile" ] || fail "the server's file limit is not $nofile"
curl -fsS "$url/healthz" > /dev/null || fail "$url/healthz"
token_file=/var/lib/brb/admin-token
[ "$(stat -c '%U %a' "$token_file")" = "$user 600" ] || fail "$token_file is $(stat -c '%U %a' "$token_file")"
status=$(BRB_TOKEN_FILE=$token_file /usr/bin/brb status --url "$url")
echo "$status" | grep -q "workers" || fail "brb status said: $status"
BRB_TOKEN_FILE=$token_file /usr/bin/brb pause --url "$url" --wait 0 --reason "package test" > /dev/null
after=$(BRB_TOKEN_FILE=$token_file /usr/bin/brb status --url "$url" --json)
echo "$after" | grep -q '"paused"' || fail "the pause did not stick: $after"
step "the server answers at $url; the installed CLI paused it"

app=$(grep -E '^/usr/bin/[^/]+$' "$work/files" | grep -v '^/usr/bin/brb$' | head -1)
[ -n "$app" ] && [ -x "$app" ] || fail "the desktop package installs no program in /usr/bin"
desktop_file=$(grep -E '^/usr/share/applications/.+\.desktop$' "$work/files" | head -1)
[ -n "$desktop_file" ] || fail "the desktop package has no .desktop entry"
grep -q "^Exec=$(basename "$app")" "$desktop_file" || fail "$desktop_file does not start $(basename "$app")"
# The app keeps its settings in the user's config dir: give it a home of its own.
mkdir -p "$work/home"
driver=${TAURI_DRIVER:-$(command -v tauri-driver || echo "$HOME/.cargo/bin/tauri-driver")}
[ -x "$driver" ] || fail "no tauri-driver at $driver (make test-package installs it)"
(cd "$root/ui" && TAURI_DRIVER="$driver" HOME="$work/home" XDG_CONFIG_HOME="$work/home/.config" BRB_URL="$url" \
  BRB_TOKEN="$(cat "$token_file")" BRB_LOG=warn \
  xvfb-run -a -s '-screen 0 1280x900x24' node tests/installed-app.mjs "$app") || fail "the installed desktop app"

kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=
step "purging both packages"
dpkg --purge big-red-button brb > "$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge"; }
for p in brb big-red-button; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "not-installed" \
    || ! dpkg-query -W "$p" >/dev/null 2>&1 || fail "$p is still known to dpkg"
done
left=()
while read -r f; do
  # Directories the packages share with the system (/usr/bin, /etc...) stay, and should.
  if [ -e "$f" ] && ! [ -d "$f" ]; then left+=("$f"); fi
done < "$work/files"
for f in /var/lib/brb /etc/brb /lib/systemd/system/brb.service /usr/share/doc/brb \
  /etc/systemd/system/multi-user.target.wants/brb.service \
  /var/lib/systemd/deb-systemd-helper-enabled/brb.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/brb.service; do
  if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done
[ ${#left[@]} -eq 0 ] || fail "left behind: ${left[*]}"
getent passwd "$user" >/dev/null && fail "the user $user is still there"
getent group "$group" >/dev/null && fail "the group $group is still there"
step "purged: no file, directory, user or group of theirs left"
echo "test-package: ok"
