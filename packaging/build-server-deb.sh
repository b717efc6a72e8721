#!/usr/bin/env bash
# The server and CLI as a Debian package: /usr/bin/brb, the systemd unit running `brb server`
# as the brb user, /etc/brb/brb.toml (a conffile), maintainer scripts that create and, on
# purge, remove the user and its data. Built with dpkg-deb from a staged tree (no cargo-deb:
# one more tool to install for what is a directory and a control file).
#   packaging/build-server-deb.sh BRB_BINARY OUT_DIR
set -euo pipefail

bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "${TMPDIR:-/tmp}/brb-deb.XXXXXX")
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/brb"
strip --strip-debug --strip-unneeded "$stage/usr/bin/brb"
install -D -m 0644 "$here/deb/brb.service" "$stage/lib/systemd/system/brb.service"
install -D -m 0644 "$here/deb/brb.toml" "$stage/etc/brb/brb.toml"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/brb/README.md"
install -D -m 0644 "$root/SECURITY.md" "$stage/usr/share/doc/brb/SECURITY.md"
cat > "$stage/usr/share/doc/brb/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: brb
Source: https://github.com/big-red-button/brb

Files: *
License: MIT or Apache-2.0
COPYRIGHT

# Library dependencies as dpkg-shlibdeps reads them from the binary (it wants a debian/control).
shlib=$(mkdir -p "$stage/.shlibdeps/debian" && echo "Source: brb" > "$stage/.shlibdeps/debian/control" \
  && cd "$stage/.shlibdeps" && dpkg-shlibdeps -O "$stage/usr/bin/brb" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
rm -rf "$stage/.shlibdeps"
[ -n "$shlib" ] || { echo "build-server-deb: dpkg-shlibdeps found no dependencies for $bin" >&2; exit 1; }

install -d "$stage/DEBIAN"
install -m 0755 "$here/deb/postinst" "$here/deb/prerm" "$here/deb/postrm" "$stage/DEBIAN/"
echo /etc/brb/brb.toml > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: brb
Version: $version
Architecture: $arch
Maintainer: Big Red Button maintainers <maintainers@big-red-button.invalid>
Installed-Size: $size
Depends: $shlib, passwd
Section: admin
Priority: optional
Homepage: https://github.com/big-red-button/brb
Description: Big Red Button: the emergency brake for background work
 One press pauses every background worker of the company while the app stays up.
 This package holds the control plane (brb server, a systemd unit running it as the
 brb user with its data in /var/lib/brb) and the brb command line.
CONTROL

mkdir -p "$out"
deb="$out/brb_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
