# The two commands: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
CARGO ?= cargo
# Where `make run` keeps its state: the platform data dir unless overridden, so the `brb` CLI
# on the same machine finds the admin token without being told.
BRB_RUN_ARGS ?=
# WebDriver bridge for the desktop app's end-to-end test (installed with cargo when missing).
TAURI_DRIVER ?= $(or $(CARGO_HOME),$(HOME)/.cargo)/bin/tauri-driver
# cargo deny for the supply-chain checks (installed with cargo when missing; pinned so the
# check's behaviour only changes when we change it).
CARGO_DENY ?= $(or $(CARGO_HOME),$(HOME)/.cargo)/bin/cargo-deny
CARGO_DENY_VERSION ?= 0.20.2

.PHONY: run test deps test-deps build ui check fmt clean firmware fuzz supply-chain audit-online bench soak bench-sdk bench-jobs-python bench-adapters package test-package

deps:
	@scripts/ensure-packages.sh base ui desktop

test-deps:
	@scripts/ensure-packages.sh base test ui desktop desktop-session firmware postgres bench sdk-python
	@scripts/python-sdk-tests.sh --install-only
	@scripts/adapter-fixtures.sh bullmq >/dev/null

## The UI (ui/dist), embedded into the binary by crates/brb-console.
ui: deps
	cd ui && npm ci --no-audit --no-fund && npm run build

build: ui
	$(CARGO) build -p brb -p brb-desktop-app

## Starts the control plane on the embedded SQLite store with the demo workload, and the
## desktop app where a display exists (else prints the web console's URL).
run: build
	scripts/run.sh $(BRB_RUN_ARGS)

## Every test: formatting, lints, unit, integration and end-to-end suites. The SDK conformance
## suite (tests/conformance.rs: every SDK's driver through sdk/conformance/scenarios) runs with
## the other cargo tests: cargo runs test binaries one at a time, so its 1 s deadlines never
## share the two cores with another suite; each driver is built by its sdks.json setup.
test: test-deps
	cd ui && npm ci --no-audit --no-fund && npm test && npm run build
	$(CARGO) fmt --all -- --check
	$(MAKE) supply-chain
	$(MAKE) -C firmware all test sim
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) build -p brb -p brb-client -p brb-desktop-app --bins --examples --locked
	cd sdk/ruby && BRB_BIN=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/brb rake test
	cd sdk/go && export BRB_BIN=$(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/brb GOCACHE=$(CURDIR)/target/go/cache GOPATH=$(CURDIR)/target/go/path GOFLAGS=-mod=mod GOPROXY=off && test -z "$$(gofmt -l . ../../examples/go)" && go vet ./... && (cd ../../examples/go && go vet ./...) && go test -count=1 ./...
	cd sdk/node && npm ci --no-audit --no-fund && npm run build && npm test
	scripts/schemathesis.sh
	scripts/python-sdk-tests.sh
	$(CARGO) test --workspace --all-targets --locked
	cd ui && node --test tests/console.e2e.mjs tests/release.e2e.mjs tests/guard.e2e.mjs tests/approval.e2e.mjs tests/a11y.e2e.mjs
	test -x "$(TAURI_DRIVER)" || $(CARGO) install tauri-driver --version '^2' --locked
	cd ui && TAURI_DRIVER="$(TAURI_DRIVER)" xvfb-run -a -s '-screen 0 1280x900x24' node --test tests/desktop.e2e.mjs
	cd ui && TAURI_DRIVER="$(TAURI_DRIVER)" xvfb-run -a -s '-screen 0 1280x900x24' node --test tests/desktop-connect.e2e.mjs
	cd ui && TAURI_DRIVER="$(TAURI_DRIVER)" xvfb-run -a -s '-screen 0 1280x900x24' node --test tests/desktop-approval.e2e.mjs
	cd ui && TAURI_DRIVER="$(TAURI_DRIVER)" dbus-run-session -- xvfb-run -a -s '-screen 0 1280x900x24' node --test tests/tray.e2e.mjs

## Linux release artifacts in target/package/ (docs/packaging.md): the server and CLI as a .deb
## (systemd unit, brb user) and a tarball, the desktop app's .deb by Tauri's bundler (the CLI
## pinned in packaging/package-lock.json; AppImage too with BRB_APPIMAGE=1), SHA256SUMS.
package: ui
	$(CARGO) build --release -p brb -p brb-desktop-app --locked
	packaging/package.sh

## Installs both .deb packages on this machine (root), starts the server as its unit would,
## shows the installed desktop app under Xvfb, purges both and checks nothing is left.
test-package: package
	@scripts/ensure-packages.sh desktop
	test -x "$(TAURI_DRIVER)" || $(CARGO) install tauri-driver --version '^2' --locked
	cd ui && npm ci --no-audit --no-fund
	TAURI_DRIVER="$(TAURI_DRIVER)" scripts/test-package.sh

## Press -> broker paused for `brb adapter rq` and `brb adapter bullmq` (BENCHMARKS.md, "Job systems").
bench-adapters: test-deps
	$(CARGO) build -p brb
	target/sdk-python-venv/bin/python scripts/bench-adapters.py

## The office-button firmware for every board, with flash and RAM use (see firmware/README.md).
firmware:
	@scripts/ensure-packages.sh firmware
	$(MAKE) -C firmware all test

## A short run of every fuzz target (cargo fuzz on the nightly toolchain; FUZZ_SECS each).
FUZZ_SECS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in button_decoder sse_parser chunked config; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

## Licenses, advisories (vendored RustSec database), duplicates, bans, sources; npm lockfile
## policy. No network needed (see SECURITY.md).
supply-chain:
	test -x "$(CARGO_DENY)" || $(CARGO) install cargo-deny --version '=$(CARGO_DENY_VERSION)' --locked
	CARGO_DENY="$(CARGO_DENY)" scripts/supply-chain.sh

## Where the package registry's audit endpoint is reachable: npm's own advisory lookup.
audit-online:
	cd ui && npm audit --omit=dev && npm audit

## The benchmark (release build): fan-out to 1,000 and 10,000 SDK gates with Redis pub/sub as
## the baseline, acknowledged toggles, status reads, memory per watcher, a reconnect storm.
## BENCH_ARGS adds options, e.g. BENCH_ARGS="--postgres --replicas 3 --watchers 50000".
BENCH_ARGS ?=
bench:
	@scripts/ensure-packages.sh base bench
	$(CARGO) build --release -p brb --locked
	ulimit -n "$$(ulimit -Hn)"; target/release/brb bench --json target/bench.json \
	  --markdown target/bench.md $(BENCH_ARGS)

## The soak (release build): random toggles, reads and 2,000 reporting gates against one
## server for SOAK_MINS minutes; fails when RSS, open files, threads or tasks grow, or the log
## has a WARN/ERROR line crates/brb-bench/soak-log-allow.txt does not explain.
SOAK_MINS ?= 60
soak:
	@scripts/ensure-packages.sh base bench
	$(CARGO) build --release -p brb --locked
	mkdir -p target/soak
	ulimit -n "$$(ulimit -Hn)"; target/release/brb bench --soak-mins $(SOAK_MINS) \
	  --json target/soak/soak.json --markdown target/soak/soak.md

## The SDKs side by side (BENCHMARKS.md, "SDK fan-out"): for each SDK whose driver has the
## fleet commands, 1,000 watchers in one driver process against a release-built brb server;
## press -> paused p50/p99 and memory per watcher. BENCH_SDK_ARGS adds options.
BENCH_SDK_ARGS ?=
bench-sdk:
	@scripts/ensure-packages.sh base sdk-python
	$(CARGO) build --release -p brb --locked
	$(CARGO) build -p brb-e2e --bin bench-sdk --locked
	ulimit -n "$$(ulimit -Hn)"; BRB_BIN=target/release/brb target/debug/bench-sdk \
	  --markdown target/bench-sdk.md --json target/bench-sdk.json $(BENCH_SDK_ARGS)

## Celery and RQ with the Big Red Button (BENCHMARKS.md, "Job systems"): two real workers each on
## a real redis-server, jobs of 100 ms; press -> last job start p50/max over 10 presses, and the
## release curve at once vs --ramp steps:1m. About six minutes.
bench-jobs-python:
	@scripts/ensure-packages.sh base sdk-python
	@scripts/python-sdk-tests.sh --install-only
	$(CARGO) build -p brb --locked
	BRB_BIN=target/debug/brb target/sdk-python-venv/bin/python sdk/python/bench/jobs.py

check:
	$(CARGO) check --workspace --all-targets

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	$(MAKE) -C firmware clean

## Jepsen-style run (tests/chaos.rs, README "Fault injection"): three replicas on PostgreSQL in
## network namespaces, faults from a printed seed, the history checked for linearizability, then
## a deliberately broken build that must be caught. A random seed unless SEED=…; SEED=…
## CHAOS_SECS=… reproduce a schedule.
## `make test` runs the same test with seed 0x18 for 60 s, then the SQLite variant for 20 s.
## VARIANT=sqlite: one server on SQLite on a disk of its own that fills up (kill -9, SIGSTOP,
## full disk). NO_NETNS=1: loopback and the test's own TCP proxy instead of network namespaces
## (the fallback where none can be made).
CHAOS_SECS ?= 600
SEED ?=
VARIANT ?= pg
NO_NETNS ?=
.PHONY: chaos
chaos:
	@scripts/ensure-packages.sh base test postgres
	$(CARGO) build -p brb --locked
	seed="$(SEED)"; [ -n "$$seed" ] || seed=0x$$(od -An -N8 -tx8 /dev/urandom | tr -d ' \n'); \
	BRB_CHAOS_SEED=$$seed BRB_CHAOS_SECS=$(CHAOS_SECS) BRB_CHAOS_VARIANT=$(VARIANT) \
	  BRB_CHAOS_NO_NETNS=$(NO_NETNS) $(CARGO) test -p brb-e2e --test chaos \
	  --locked -- --nocapture

## The outcomes of a release after a pause on the real demo (tests/guard_demo.rs, also run by
## `make test`): a pause recovers, resume at once relapses, a guarded release does not, a
## release too fast is paused again by its guard. Writes each run's series to
## docs/guard-curves/e2e-*.csv and prints them.
.PHONY: guard-curves
guard-curves:
	$(CARGO) build -p brb --locked
	BRB_GUARD_CURVES=$(CURDIR)/docs/guard-curves $(CARGO) test -p brb-e2e --test guard_demo \
	  --locked -- --nocapture
