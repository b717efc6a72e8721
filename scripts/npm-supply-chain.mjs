#!/usr/bin/env node
// Offline supply-chain checks for ui/ and packaging/ (the pinned Tauri CLI), given as the
// argument (run by `make test` through `make supply-chain`).
//
// Why this and not `npm audit`: the audit endpoint is not reachable from the build network
// (the registry proxy answers 405 to its POST), and GitHub's advisory database is several GB, too
// big to vendor. So this script checks what can be checked without a network, and SECURITY.md says
// what it does not cover (known-vulnerability lookups for npm packages: run `npm audit` where the
// endpoint is reachable, see `make audit-online`). What it does check:
//   - every locked package carries an sha512 integrity hash (npm ci refuses a tarball that differs);
//   - nothing is fetched from git, a URL or a local path: only the default registry;
//   - no package runs install scripts (none is needed; a new one must be reviewed and listed);
//   - licenses are in the same allow-list as deny.toml;
//   - direct dependencies are pinned to exact versions;
//   - what ships to users (the non-dev closure, bundled into the console and the desktop app) is
//     exactly the reviewed list below; growing it is a reviewed change, not an accident.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const uiDir = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), "..", "ui");
const lock = JSON.parse(readFileSync(join(uiDir, "package-lock.json"), "utf8"));
const manifest = JSON.parse(readFileSync(join(uiDir, "package.json"), "utf8"));

const ALLOWED_LICENSES = new Set([
  "MIT",
  "Apache-2.0",
  "ISC",
  "BSD-2-Clause",
  "BSD-3-Clause",
  "0BSD",
  "MPL-2.0",
  "Zlib",
  "Unlicense",
  "CC0-1.0",
]);
// Packages that may run install scripts. Empty on purpose.
const INSTALL_SCRIPTS_ALLOWED = new Set([]);
// The runtime closure that ships inside the UI bundle.
const RUNTIME_ALLOWED = new Set(["@tauri-apps/api", "uplot"]);

const problems = [];
const runtime = [];

// An SPDX expression is acceptable when some alternative of an OR is acceptable and every part
// of an AND is. Parentheses are flattened: npm licenses are short expressions.
function licenseOk(expr) {
  if (typeof expr !== "string" || expr.length === 0) return false;
  const flat = expr.replace(/[()]/g, " ").trim();
  return flat.split(/\s+OR\s+/).some((alt) =>
    alt.split(/\s+AND\s+/).every((id) => ALLOWED_LICENSES.has(id.trim())),
  );
}

for (const [path, pkg] of Object.entries(lock.packages ?? {})) {
  if (path === "") continue;
  const name = path.replace(/^.*node_modules\//, "");
  if (pkg.link) {
    problems.push(`${name}: linked from a local path (${pkg.resolved ?? "?"})`);
    continue;
  }
  if (!/^sha512-/.test(pkg.integrity ?? "")) {
    problems.push(`${name}: no sha512 integrity hash in package-lock.json`);
  }
  if (pkg.resolved !== undefined) {
    // .npmrc omits registry URLs from the lockfile, so any `resolved` is a non-registry source.
    problems.push(`${name}: fetched from ${pkg.resolved}, not the registry`);
  }
  if (pkg.hasInstallScript && !INSTALL_SCRIPTS_ALLOWED.has(name)) {
    problems.push(`${name}: runs install scripts`);
  }
  if (!licenseOk(pkg.license)) {
    problems.push(`${name}: license ${JSON.stringify(pkg.license)} is not in the allow-list`);
  }
  if (!pkg.dev && !pkg.optional) runtime.push(name);
  if (!pkg.dev && !pkg.optional && !RUNTIME_ALLOWED.has(name)) {
    problems.push(`${name}: new runtime (shipped) dependency; review it and add it to RUNTIME_ALLOWED`);
  }
}

for (const section of ["dependencies", "devDependencies"]) {
  for (const [name, range] of Object.entries(manifest[section] ?? {})) {
    if (!/^\d+\.\d+\.\d+$/.test(range)) {
      problems.push(`${name}: ${section} range ${JSON.stringify(range)} is not an exact version`);
    }
  }
}

const count = Object.keys(lock.packages ?? {}).length - 1;
if (problems.length > 0) {
  console.error(`npm supply-chain check: ${problems.length} problem(s) in ${count} packages:`);
  for (const p of problems) console.error(`  - ${p}`);
  process.exit(1);
}
console.log(
  `npm supply-chain check: ${count} locked packages ok (integrity, sources, no install scripts, ` +
    `licenses, pinned direct deps, runtime closure = ${runtime.join(", ") || "none"})`,
);
