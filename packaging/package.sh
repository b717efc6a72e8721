#!/usr/bin/env bash
# `make package`: everything a release ships for Linux, into target/package/:
#   brb_VERSION_ARCH.deb                  the server and CLI (packaging/build-server-deb.sh)
#   brb-VERSION-linux-ARCH.tar.gz         the same binary, the unit and an example config
#   big-red-button_VERSION_ARCH.deb       the desktop app, by Tauri's bundler
#   Big Red Button_VERSION_ARCH.AppImage  only with BRB_APPIMAGE=1 (see docs/packaging.md: the
#                                         bundler downloads linuxdeploy from GitHub)
#   SHA256SUMS                            of all of the above
# Expects ui/dist built and `cargo build --release -p brb -p brb-desktop-app` done (the
# Makefile's package target does both).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/package
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
rm -rf "$out"
mkdir -p "$out"

echo "package: server and CLI (.deb)"
"$root/packaging/build-server-deb.sh" "$target/release/brb" "$out" >/dev/null

echo "package: release tarball"
tarname=brb-$version-linux-$arch
stage=$(mktemp -d "${TMPDIR:-/tmp}/brb-tar.XXXXXX")
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$target/release/brb" "$stage/$tarname/brb"
strip --strip-debug --strip-unneeded "$stage/$tarname/brb"
install -m 0644 "$root/packaging/deb/brb.service" "$root/packaging/deb/brb.toml" \
  "$root/README.md" "$root/SECURITY.md" "$stage/$tarname/"
# Reproducible: sorted names, fixed owner and times (the last commit's).
mtime=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -C "$stage" -cf - "$tarname" | gzip -n -9 > "$out/$tarname.tar.gz"

echo "package: desktop app (Tauri's bundler)"
(cd "$root/packaging" && npm ci --no-audit --no-fund --loglevel=error)
# The bundler copies target/release/brb-desktop as it is: without its line tables it is a
# third of the size, and the installed app needs none (panics still print their message).
strip --strip-debug "$target/release/brb-desktop"
# Library dependencies: what dpkg-shlibdeps reads from the binary. The bundler adds
# libwebkit2gtk-4.1-0, libgtk-3-0 and (the app has a tray) libayatana-appindicator3-1 itself,
# the last one loaded with dlopen, so no tool could read it from the binary.
shlib=$(cd "$stage" && mkdir -p debian && echo "Source: big-red-button" > debian/control \
  && dpkg-shlibdeps -O "$target/release/brb-desktop" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlib" ] || { echo "package: dpkg-shlibdeps found no dependencies for brb-desktop" >&2; exit 1; }
bundles=deb
if [ "${BRB_APPIMAGE:-0}" = 1 ]; then bundles=deb,appimage; fi
node - "$shlib" "$out/tauri.bundle.json" <<'JS'
const [shlib, path] = process.argv.slice(2);
const added = new Set(["libwebkit2gtk-4.1-0", "libgtk-3-0", "libayatana-appindicator3-1"]);
const depends = shlib.split(/,\s*/).filter((d) => !added.has(d.split(" ")[0]));
const config = {
  bundle: {
    active: true,
    publisher: "Big Red Button",
    copyright: "MIT OR Apache-2.0",
    license: "MIT OR Apache-2.0",
    category: "DeveloperTool",
    homepage: "https://github.com/big-red-button/brb",
    shortDescription: "The emergency brake for background work",
    longDescription:
      "The Big Red Button desktop app: the state of the brake at a glance, a tray icon that follows it, notifications on every change, and one click (or a global shortcut) to pause every background worker.",
    linux: { deb: { depends, section: "admin", priority: "optional" } },
  },
};
require("node:fs").writeFileSync(path, JSON.stringify(config, null, 2));
JS
(cd "$root/src-tauri" && CI=true "$root/packaging/node_modules/.bin/tauri" bundle \
  --bundles "$bundles" --config "$out/tauri.bundle.json" --no-sign)
bundle_dir=$target/release/bundle
# Named as Debian names packages (the bundler uses the product name, with spaces).
cp "$bundle_dir/deb/Big Red Button_${version}_${arch}.deb" "$out/big-red-button_${version}_${arch}.deb"
if [ "$bundles" != deb ]; then cp "$bundle_dir"/appimage/*.AppImage "$out/"; fi
rm "$out/tauri.bundle.json"

(cd "$out" && sha256sum -- *.deb *.tar.gz $(ls *.AppImage 2>/dev/null) > SHA256SUMS)
echo "package: done"
(cd "$out" && ls -l --block-size=K -- *)
