# wal.rs — see README.md.
CARGO ?= cargo

.PHONY: build test lint fmt bench bench-storage bench-shards bench-instrumentation clean init gencert run

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

bench: bench-storage bench-shards bench-instrumentation

bench-storage:
	$(CARGO) bench --bench storage

clean:
	$(CARGO) clean

bench-shards:
	$(CARGO) bench --bench shards

# Durable-append throughput of `walrs serve` with metrics on vs off (issue 6).
bench-instrumentation:
	$(CARGO) bench --bench instrumentation

## Directories the example config uses.
init:
	mkdir -p data certs

## Development certificates (CA, server, clients root and nobody) under certs/.
gencert: init
	$(CARGO) run --release -- certs --out certs

## Build, make dev certificates if certs/ has none, and serve mTLS on 127.0.0.1:7070.
run: init
	$(CARGO) build --release
	@if [ ! -f certs/ca.pem ]; then ./target/release/walrs certs --out certs; fi
	./target/release/walrs serve --config walrs.example.toml
