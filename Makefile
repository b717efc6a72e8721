# The two commands: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
CARGO ?= cargo
# Where `make run` keeps its state: the platform data dir unless overridden, so the `brb` CLI
# on the same machine finds the admin token without being told.
BRB_RUN_ARGS ?=

.PHONY: run test deps test-deps build check fmt clean

deps:
	@scripts/ensure-packages.sh base

test-deps:
	@scripts/ensure-packages.sh base test postgres

build: deps
	$(CARGO) build -p brb

## Starts the control plane on the embedded SQLite store with the demo workload and prints
## where it is.
run: build
	./target/debug/brb server --demo $(BRB_RUN_ARGS)

## Every test: formatting, lints, unit, integration and end-to-end suites.
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) build -p brb -p brb-client --bins --examples --locked
	$(CARGO) test --workspace --all-targets --locked

check:
	$(CARGO) check --workspace --all-targets

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
