#!/bin/bash
# The four scenarios of issue 5, as recorded in BENCHMARKS.md ("End-to-end").
# Run from the repository root after `cargo build --release` (or `make bench-scenarios`);
# each scenario writes O/<name>.{json,hgrm,svg,txt} (O defaults to target/bench-runs).
set -e
W=./target/release/walrs; O=${O:-target/bench-runs}
mkdir -p "$O"
run() { name=$1; shift; echo "== $name: walrs bench $*"; uptime; $W bench "$@" --json $O/$name.json --hgrm $O/$name.hgrm --svg $O/$name.svg | tee $O/$name.txt; uptime; }
run s1 --producers 4 --partitions 4 --record-bytes 1024 --batch-records 100 --depth 8 --duration 10 --warmup 2
run s2max --producers 4 --partitions 4 --record-bytes 1024 --batch-records 1 --depth 16 --duration 10 --warmup 2
half=$(python3 -c "import json;print(int(json.load(open('$O/s2max.json'))['append']['records_per_s']/2))")
run s2 --producers 4 --partitions 4 --record-bytes 1024 --batch-records 1 --depth 16 --rate $half --duration 10 --warmup 2
run s3 --producers 64 --partitions 4 --record-bytes 1024 --batch-records 1 --depth 1 --duration 10 --warmup 2
run s4 --producers 4 --consumers 4 --partitions 4 --record-bytes 1024 --batch-records 1 --depth 16 --rate 10000 --duration 10 --warmup 2
