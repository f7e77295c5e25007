# wal.rs — see README.md.
CARGO ?= cargo

.PHONY: build test fuzz fuzz-build chaos chaos-long chaos-cluster chaos-cluster-long lint fmt bench bench-all bench-scenarios bench-storage bench-shards bench-instrumentation bench-cluster bench-latency clean init gencert run run-cluster

build:
	$(CARGO) build --release

## Everything CI runs: formatting, lints, and every test.
## (The workspace: the server crate and tools/powerfs, the power-loss FUSE file system of the
## crash tests; tests/crash_cycles.rs runs 3 short crash cycles per variant here, and
## tests/chaos_cluster.rs a 40 s cluster campaign and its control, about 100 s, as root.)
test:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --all-targets

## Crash cycles of one `walrs serve` (issue 15, docs/RELIABILITY.md): SIGKILL on the uring and
## portable engines, SIGKILL and power cuts on powerfs; CYCLES per variant (default 50). Set
## WALRS_TEST_SEED to replay a run; a violation's history goes to target/chaos/, and one
## summary line per variant to target/chaos/summary.jsonl. VARIANTS filters the tests by name
## (e.g. VARIANTS=power_cuts).
CYCLES ?= 50
VARIANTS ?=
chaos:
	WALRS_CHAOS_CYCLES=$(CYCLES) WALRS_CHAOS_OUT=$(CURDIR)/target/chaos \
		$(CARGO) test --release --test crash_cycles $(VARIANTS) -- --nocapture --test-threads=1

## The same for longer: each variant runs until DURATION seconds have passed (default one
## hour) or CYCLES cycles (default 100000), whichever comes first.
DURATION ?= 3600
chaos-long:
	WALRS_CHAOS_CYCLES=$(if $(filter 50,$(CYCLES)),100000,$(CYCLES)) \
		WALRS_CHAOS_DURATION_S=$(DURATION) WALRS_CHAOS_OUT=$(CURDIR)/target/chaos \
		$(CARGO) test --release --test crash_cycles $(VARIANTS) -- --nocapture --test-threads=1

## The cluster fault campaign (issue 15, docs/RELIABILITY.md): NODES `walrs serve` processes
## (default 3), each in its own network namespace on a bridge and with its data dir on powerfs,
## under nemeses drawn from a printed seed for CLUSTER_DURATION seconds (default 120), then
## checked. Needs root, iproute2 and nftables. `make test` runs it too, for 40 s (debug build).
## WALRS_TEST_SEED replays a run; summaries go to target/chaos/summary.jsonl, a violation's
## history to target/chaos/cluster-<seed>.history.
CLUSTER_DURATION ?= 120
NODES ?= 3
chaos-cluster:
	WALRS_CHAOS_CLUSTER_DURATION_S=$(CLUSTER_DURATION) WALRS_CHAOS_CLUSTER_NODES=$(NODES) \
		WALRS_CHAOS_OUT=$(CURDIR)/target/chaos \
		$(CARGO) test --release --test chaos_cluster -- --nocapture --test-threads=1

## The same for DURATION seconds (default one hour).
chaos-cluster-long:
	WALRS_CHAOS_CLUSTER_DURATION_S=$(DURATION) WALRS_CHAOS_CLUSTER_NODES=$(NODES) \
		WALRS_CHAOS_OUT=$(CURDIR)/target/chaos \
		$(CARGO) test --release --test chaos_cluster -- --nocapture --test-threads=1

## Fuzzing (issue 15, docs/RELIABILITY.md "Fuzzing"): each cargo-fuzz target of fuzz/ for
## FUZZ_SECONDS (default 60), starting from the committed seeds (fuzz/seeds/) and crash
## regressions (fuzz/regressions/); new inputs go to fuzz/corpus/ (not committed), a crash to
## fuzz/artifacts/ and fails the run. Stable Rust with RUSTC_BOOTSTRAP=1 (libFuzzer needs
## nightly flags); needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler.
## The storage targets write files under FUZZ_TMPDIR (default /dev/shm, so no disk I/O).
## FUZZ_TARGETS picks targets; `make test` replays the seeds and regressions without it
## (tests/fuzz_corpus.rs).
FUZZ_SECONDS ?= 60
FUZZ_TMPDIR ?= /dev/shm
FUZZ_TARGETS ?= batch_decode segment_recovery index_rebuild config_parse replication_message server_request
fuzz-build:
	RUSTC_BOOTSTRAP=1 $(CARGO) fuzz build --fuzz-dir fuzz

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t fuzz/regressions/$$t || exit 1; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		TMPDIR=$(FUZZ_TMPDIR) RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz $$t \
			fuzz/corpus/$$t fuzz/seeds/$$t fuzz/regressions/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## End-to-end benchmark (walrs bench): in-process server on a temp dir, mutual TLS,
## 4 producers x 4 partitions, batches of 100 x 1 KiB, 2 consumers, 10 s, with the raw
## disk and raw RPC baselines; results in target/bench.{json,hgrm,svg}.
bench:
	$(CARGO) build --release
	./target/release/walrs bench --producers 4 --partitions 4 --batch-records 100 \
		--consumers 2 --duration 10 --json target/bench.json --hgrm target/bench.hgrm \
		--svg target/bench.svg

## The four scenarios of BENCHMARKS.md's end-to-end section, into target/bench-runs/.
bench-scenarios:
	$(CARGO) build --release
	bash benches/walrs-bench-scenarios.sh

## Replication on three nodes against a single node (BENCHMARKS.md, issue 10): W1-W3,
## failover over 20 kills, idle CPU per partition; about 15 minutes, results in
## target/bench-cluster/. Needs python3 (the failover driver makes its own venv).
## `bash benches/cluster-bench.sh reassign` (not run by default): moving a 1 GiB partition
## onto a fourth node against a raw copy, and W1's dip during a move (issue 11).
bench-cluster:
	$(CARGO) build --release
	bash benches/cluster-bench.sh

## Commit latency side by side (issue 14, BENCHMARKS.md): W2 (1 client), W2 at half load and
## W3 (64 clients) against `walrs serve` on each engine and write mode, the gRPC layer alone
## (`walrs bench --serve-rpc-baseline`), Redis Streams with appendfsync always, and the raw
## write+fdatasync baseline; server and load generator on separate cores (taskset). About
## 14 minutes; results in target/bench-latency/results.md.
## Needs redis-server and redis-tools for the Redis rows (REDIS=0 skips them).
bench-latency:
	$(CARGO) build --release
	bash benches/commit-latency.sh

## Every benchmark: end-to-end, storage (criterion), shards and instrumentation.
bench-all: bench bench-storage bench-shards bench-instrumentation

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

## Build, and start three nodes on 127.0.0.1:7071-7073 (cluster/node-N.toml): dev and node
## certificates under certs/ on first run, data under data/cluster/; Ctrl-C stops them all.
run-cluster:
	$(CARGO) build --release
	./cluster/run.sh
