#!/usr/bin/env bash
# Refreshes the vendored RustSec advisory database from a checkout of
# https://github.com/rustsec/advisory-db (clone or pull it where the network allows, then):
#   scripts/update-advisory-db.sh /path/to/advisory-db
# Commit the result; `make supply-chain` then checks against it without any network.
set -euo pipefail
src=${1:?usage: scripts/update-advisory-db.sh /path/to/advisory-db-checkout}
dest="$(dirname "$0")/../supply-chain/advisory-db"
test -d "$src/crates" || { echo "$src has no crates/ directory" >&2; exit 1; }
rm -rf "$dest/crates"
mkdir -p "$dest"
cp -r "$src/crates" "$dest/crates"
cp "$src/LICENSE.txt" "$dest/LICENSE.txt"
{
  echo "repository: https://github.com/rustsec/advisory-db"
  echo "commit: $(git -C "$src" rev-parse HEAD)"
  echo "commit-date: $(git -C "$src" log -1 --format=%cI)"
} > "$dest/UPSTREAM"
cat "$dest/UPSTREAM"
