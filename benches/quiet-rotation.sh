#!/usr/bin/env bash
# Release binaries of different commits, alternated run by run in one session, so that all
# meet the same disk and load (BENCHMARKS.md: "`replication_factor = 1` against the code
# before replication", and the idempotence and issue-14 rows measured in the same runs).
#
# Usage: benches/quiet-rotation.sh NAME=BINARY... [-- EXTRA]
#   e.g. benches/quiet-rotation.sh prerep=/tmp/old/walrs new=target/release/walrs
#   A name ending in `-idem` runs with idempotence (the default of newer clients); any other
#   name gets `--no-idempotence` unless its binary does not know the flag (older clients).
#
# Each run is `walrs bench` against its in-process server (mutual TLS, 2 shards, engine
# auto, no baselines): W1 = 4 producers x depth 4, 4 partitions, 100 x 1 KiB per append;
# W3 = 64 producers, 4 partitions, 1 x 1 KiB, depth 1; WARMUP (2) s, then DURATION (10) s.
# ROUNDS (5) rounds; in each, W1 for every binary in the given order, then W3.
# DURABILITY=none measures the CPU path alone (no fsync: the disk's noise is out) and adds
# the process's CPU time (user + system, /usr/bin/time) per record.
# Results: OUT (target/quiet-rotation)/rotation.txt, one line per run, and each run's JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-target/quiet-rotation}")
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
DURABILITY=${DURABILITY:-fsync}
mkdir -p "$OUT"
[ $# -gt 0 ] || { sed -n '2,18p' "$0"; exit 2; }

names=(); bins=()
for arg in "$@"; do
  names+=("${arg%%=*}"); bins+=("$(realpath "${arg#*=}")")
done

common="--record-bytes 1024 --duration $DURATION --warmup $WARMUP --baseline 0 --durability $DURABILITY"
W1="--producers 4 --partitions 4 --batch-records 100 --depth 4 $common"
W3="--producers 64 --partitions 4 --batch-records 1 --depth 1 $common"

run() { # index workload round
  local name=${names[$1]} bin=${bins[$1]} w=$2 round=$3 args extra=()
  [ "$w" = W1 ] && args=$W1 || args=$W3
  if [[ $name != *-idem ]] && "$bin" bench --help | grep -q -- --no-idempotence; then
    extra=(--no-idempotence)
  fi
  local base=$OUT/$w-$name-$round
  # shellcheck disable=SC2086
  (cd /tmp && /usr/bin/time -f "%U %S" -o "$base.time" "$bin" bench $args "${extra[@]}" \
    --json "$base.json" > "$base.txt" 2>&1)
  python3 - "$base" "$w $name round$round" <<'PY' | tee -a "$OUT/rotation.txt"
import json, sys
base, label = sys.argv[1:]
a = json.load(open(base + ".json"))["append"]
user, system = map(float, open(base + ".time").read().split()[-2:])
load = open("/proc/loadavg").read().split()[0]
print(f"{label}: {a['records_per_s']:.0f} records/s, p50 {a['latency_us']['p50']} us, "
      f"p99 {a['latency_us']['p99']} us, process CPU {user + system:.1f} s "
      f"({1e6 * (user + system) / a['records']:.2f} us per measured record, warm-up included), "
      f"load {load}")
PY
}

echo "start $(date -u), durability $DURABILITY, $(uptime)" >> "$OUT/rotation.txt"
for round in $(seq 1 "$ROUNDS"); do
  for w in W1 W3; do
    for i in "${!names[@]}"; do run "$i" "$w" "$round"; done
  done
done
echo "end $(date -u), $(uptime)" >> "$OUT/rotation.txt"
