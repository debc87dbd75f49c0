# kubescribe: `make run` serves the webhook on built-in defaults, `make test` runs every test.
CARGO ?= cargo

.PHONY: run test lint bench faults fuzz deps build

run:
	$(CARGO) run --release --bin kubescribe -- serve

test: deps lint
	$(CARGO) test --all-targets --locked

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

bench: deps
	scripts/bench.sh
	scripts/bench-memory.sh
	scripts/bench-secrets.sh

# What kubescribe promises under kill -9, a full disk and a remote that is down
# (about 20 minutes; the disk scenario needs root). docs/operations.md has figures.
faults: deps
	scripts/fault-suite.sh

# cargo-fuzz on nightly over the review decoder, the sanitiser and the path layout.
fuzz:
	scripts/fuzz.sh

deps:
	scripts/install-deps.sh
	scripts/install-envtest.sh

build:
	$(CARGO) build --release --locked
