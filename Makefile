# wal.rs — see README.md.
CARGO ?= cargo

.PHONY: build test lint fmt bench bench-storage bench-shards clean

build:
	$(CARGO) build --release

## Everything CI runs: formatting, lints, and every test.
test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

lint:
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

bench: bench-storage bench-shards

bench-storage:
	$(CARGO) bench --bench storage

clean:
	$(CARGO) clean

bench-shards:
	$(CARGO) bench --bench shards
