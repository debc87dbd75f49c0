# kubescribe: `make run` serves the webhook on built-in defaults, `make test` runs every test.
CARGO ?= cargo

.PHONY: run test lint bench deps build

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

deps:
	scripts/install-deps.sh
	scripts/install-envtest.sh

build:
	$(CARGO) build --release --locked
