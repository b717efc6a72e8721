#!/usr/bin/env bash
# Supply-chain checks that need no network (part of `make test`):
#   1. cargo deny: licenses, bans (duplicates, banned crates), sources, and advisories from the
#      RustSec database vendored in supply-chain/advisory-db (a snapshot; see its UPSTREAM file);
#   2. the npm lockfile policy (scripts/npm-supply-chain.mjs).
# cargo deny reads a database from a git checkout and judges its age by the HEAD commit's date,
# so the vendored files are committed into a throw-away repository dated as the upstream commit:
# the staleness limit in deny.toml then measures the snapshot's real age, not today's date.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY="${CARGO_DENY:-cargo-deny}"
VENDORED=supply-chain/advisory-db
# cargo deny's directory name for https://github.com/rustsec/advisory-db under db-path.
DB=target/advisory-dbs/advisory-db-3157b0e258782691

upstream_date=$(sed -n 's/^commit-date: //p' "$VENDORED/UPSTREAM")
upstream_commit=$(sed -n 's/^commit: //p' "$VENDORED/UPSTREAM")
stamp="$upstream_commit $(find "$VENDORED" -type f | wc -l)"
if [ ! -f "$DB/.vendored" ] || [ "$(cat "$DB/.vendored")" != "$stamp" ]; then
    rm -rf "$DB"
    mkdir -p "$DB"
    cp -r "$VENDORED/crates" "$DB/crates"
    (
        cd "$DB"
        git init -q
        git add crates
        GIT_AUTHOR_DATE="$upstream_date" GIT_COMMITTER_DATE="$upstream_date" \
            git -c user.name=vendored -c user.email=vendored@localhost \
            commit -q -m "RustSec advisory-db $upstream_commit (vendored)"
        # cargo deny takes the newer of the commit date and HEAD's mtime: date HEAD too.
        touch -d "$upstream_date" .git/HEAD
    )
    echo "$stamp" > "$DB/.vendored"
fi

echo "cargo deny (advisory database: RustSec $upstream_commit of $upstream_date)"
# cargo deny reads the metadata of every target platform in deny.toml: fetch those crates too.
cargo fetch --locked --quiet
"$CARGO_DENY" --frozen --workspace check advisories bans licenses sources
node scripts/npm-supply-chain.mjs
node scripts/npm-supply-chain.mjs packaging
