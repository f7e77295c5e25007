#!/usr/bin/env bash
# Issue 14: what one W3 append costs the server, in CPU and in context switches
# (BENCHMARKS.md, "The gRPC layer alone, and AppendStream without a task of its own").
#
# Usage: benches/w3-server-cpu.sh   (from anywhere). Needs a release build
# (`cargo build --release`) and python3. Nothing here is needed by `make test`.
#
# For each round (ROUNDS, default 3), each binary (BINS, default target/release/walrs; give
# two to compare builds: they alternate) and each variant (VARIANTS, default "uring"):
#   uring, portable, uring-inline   `walrs serve`, 1 shard, durability fsync, metrics off;
#   uring-none                      the same with durability none (no fdatasync at all);
#   rpc-drop                        no server, the raw-RPC baseline's drop service
#                                   (`walrs bench --serve-rpc-baseline`): gRPC alone.
# STORAGE_EXTRA adds TOML lines to the servers' [storage] table (e.g. 'flush_delay_us = 100').
# The server runs under `taskset -c $SERVER_CPUS` (default 1) and `walrs bench --addr` under
# `taskset -c $CLIENT_CPUS` (default 0): W3, 64 producers, 4 partitions, 1 x 1 KiB record per
# append, depth 1, DURATION seconds (default 6). Over the middle 4 s the script reads, from
# /proc, the server's CPU time (utime + stime) and the context switches of every one of its
# threads (io_uring's io-wq workers included while they live), and divides by the appends
# acknowledged in that time (the run's rate times the window).
# Output: one line per run on stdout and in OUT/results.txt (OUT default target/bench-w3-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=${BINS:-target/release/walrs}
VARIANTS=${VARIANTS:-uring}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
PORT=${PORT:-7391}
OUT=$(realpath -m "${OUT:-target/bench-w3-cpu}")
mkdir -p "$OUT"
: > "$OUT/results.txt"
# SERVER, its cleanup on exit, wait_for.
source benches/server-lib.sh

# "voluntary involuntary cpu_seconds" of the server, all its threads.
snapshot() {
  local v=0 n=0 a b
  for t in /proc/"$SERVER"/task/*; do
    a=$(awk '/^voluntary_ctxt/ { print $2 }' "$t/status" 2>/dev/null || true)
    b=$(awk '/^nonvoluntary_ctxt/ { print $2 }' "$t/status" 2>/dev/null || true)
    v=$((v + ${a:-0})); n=$((n + ${b:-0}))
  done
  echo "$v $n $(awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$SERVER/stat")"
}

start_server() {
  local bin=$1 variant=$2 dir=$3
  local durability=fsync storage
  case $variant in
    uring) storage='engine = "uring"' ;;
    uring-inline) storage=$'engine = "uring"\nuring_write = "inline"' ;;
    uring-none) storage='engine = "uring"'; durability=none ;;
    portable) storage='engine = "portable"' ;;
    rpc-drop)
      taskset -c "$SERVER_CPUS" "$bin" bench --serve-rpc-baseline "127.0.0.1:$PORT" > "$dir/serve.log" 2>&1 &
      SERVER=$!
      wait_for "$dir/serve.log" "raw-RPC baseline listening"
      return ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  cat > "$dir/serve.toml" <<EOF
listen = "127.0.0.1:$PORT"
data_dir = "$dir/data"
[storage]
shards = 1
durability = "$durability"
$storage
${STORAGE_EXTRA:-}
[metrics]
enabled = false
EOF
  taskset -c "$SERVER_CPUS" "$bin" serve --config "$dir/serve.toml" > "$dir/serve.log" 2>&1 &
  SERVER=$!
  wait_for "$dir/serve.log" "serving"
}

for round in $(seq 1 "$ROUNDS"); do
  for bin in $BINS; do
    for variant in $VARIANTS; do
      name="$(basename "$bin")-$variant-r$round"
      dir="$OUT/$name"
      rm -rf "$dir"; mkdir -p "$dir"
      start_server "$(realpath "$bin")" "$variant" "$dir"
      taskset -c "$CLIENT_CPUS" "$bin" bench --addr "127.0.0.1:$PORT" --no-tls --record-bytes 1024 \
        --batch-records 1 --producers 64 --partitions 4 --depth 1 --duration "$DURATION" \
        --warmup 0.5 --baseline 0 --quiet --topic w3 --json "$dir/bench.json" > "$dir/bench.txt" 2>&1 &
      bench=$!
      sleep 1.5
      first=$(snapshot); t1=$(date +%s.%N)
      sleep 4
      second=$(snapshot); t2=$(date +%s.%N)
      wait "$bench"
      kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
      python3 - "$name" "$dir/bench.json" "$first" "$second" "$t1" "$t2" <<'EOF' | tee -a "$OUT/results.txt"
import json, sys
name, path = sys.argv[1], sys.argv[2]
a, b = [list(map(float, x.split())) for x in sys.argv[3:5]]
window = float(sys.argv[6]) - float(sys.argv[5])
rate = json.load(open(path))["append"]["records_per_s"]
appends = rate * window
print(f"{name}: {rate:,.0f} appends/s; per append: server CPU {(b[2] - a[2]) * 1e6 / appends:.1f} us, "
      f"switches {(b[0] - a[0]) / appends:.2f} voluntary + {(b[1] - a[1]) / appends:.2f} involuntary")
EOF
    done
  done
done
