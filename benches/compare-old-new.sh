#!/bin/bash
# Old build against new, alternating in one run, so that both see the same disk and load.
# Usage: benches/compare-old-new.sh OLD_DIR NEW_DIR [OUT]
#   OLD_DIR/NEW_DIR each hold `walrs` (the release binary) and `shards-bench` (the release
#   `shards` bench binary: `cargo bench --no-run --bench shards` prints its path).
# Rows: the shard bench's 64 appenders x 1 and x 100 records on uring and portable (3 s
# each), and `walrs bench` scenarios 1 and 3 of BENCHMARKS.md (10 s each); 3 rounds.
set -u
OLD=$1; NEW=$2; O=${3:-target/compare}; mkdir -p "$O"
echo "machine: $(nproc) cores, $(uname -r), $(date -u)" | tee "$O/shards.txt"
for round in 1 2 3; do
  for row in uring/64/1 portable/64/1 uring/64/100 portable/64/100; do
    for v in old new; do
      dir=$OLD; [ $v = new ] && dir=$NEW
      (cd /tmp && WALRS_BENCH_SECS=3 WALRS_BENCH_ONLY=$row "$dir/shards-bench" --bench 2>/dev/null \
        | sed "s|^|$v $row round$round: |") | tee -a "$O/shards.txt"
    done
  done
done
for round in 1 2 3; do
  for v in old new; do
    dir=$OLD; [ $v = new ] && dir=$NEW
    "$dir/walrs" bench --producers 4 --partitions 4 --record-bytes 1024 --batch-records 100 \
      --depth 8 --duration 10 --warmup 2 --json "$O/s1-$v-$round.json" > "$O/s1-$v-$round.txt" 2>&1
    "$dir/walrs" bench --producers 64 --partitions 4 --record-bytes 1024 --batch-records 1 \
      --depth 1 --duration 10 --warmup 2 --json "$O/s3-$v-$round.json" > "$O/s3-$v-$round.txt" 2>&1
    python3 - "$O" $v $round <<'PY' | tee -a "$O/e2e.txt"
import json, sys
out, v, r = sys.argv[1:]
for s in ("s1", "s3"):
    a = json.load(open(f"{out}/{s}-{v}-{r}.json"))["append"]
    l = a["latency_us"]
    print(f"{v} {s} round{r}: {a['records_per_s']:.0f} records/s, {a['mb_per_s']:.1f} MB/s, "
          f"p50 {l['p50']} us, p99 {l['p99']} us")
PY
  done
done
