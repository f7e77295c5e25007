#!/usr/bin/env bash
# Issue 14: the latency of one durable append, side by side (BENCHMARKS.md, "Issue 14").
#
# Usage: benches/commit-latency.sh   (from anywhere; `make bench-latency`). Needs a release
# build (`cargo build --release`; WALRS=path for another binary), python3, and for the Redis
# rows Debian's redis-server and redis-tools (`apt-get install -y redis-server redis-tools`;
# REDIS=0 skips them). Nothing here is needed by `make test`.
#
# For each round (ROUNDS, default 2) and each wal.rs variant (VARIANTS, default "uring
# uring-dsync uring-dsync-spin portable rpc-drop"; also "uring-inline", "uring-batch" (uring
# under `chrt --batch 0`: the same as the default `server.thread_policy = "batch"` since
# session 33), "uring-unchanged" and "portable-unchanged" (`server.thread_policy =
# "unchanged"`: the threads keep the policy the server started with, SCHED_OTHER here), and
# "uring-noprealloc" and
# "portable-noprealloc" with `storage.preallocate = false`), a fresh `walrs serve` (plaintext
# on loopback, durability fsync, 1 shard, metrics off, its own data dir under OUT) is driven by
# `walrs bench --addr` through the workloads below. The variant "rpc-drop" starts no server
# but the raw-RPC baseline's service as its own process (`walrs bench --serve-rpc-baseline`:
# it acks every append at once and stores nothing), pinned like a server: the ceiling of the
# gRPC layer on this machine, measured the way the servers are.
#   W2      1 producer, 1 partition, 1 x 1 KiB record per append, depth 1 (closed loop);
#   W2half  the same producer, open loop at half of this round's W2 rate (--rate, latency
#           from the intended send time: coordinated omission corrected), up to 16 appends
#           in flight so that a slow moment can be caught up;
#   W3      64 producers, 4 partitions, 1 x 1 KiB, depth 1;
#   W3one   the same on 1 partition: one log, as Redis's one stream `s` is (not in the default
#           WORKLOADS; BENCHMARKS.md, session 33).
# Then Redis 7 (appendonly yes, appendfsync always: one fdatasync per event-loop turn, before
# the replies) with `redis-benchmark -c 1` and `-c 64` of `XADD s * f <1 KiB>`.
# The raw baseline is the bench's own: one thread, write + fdatasync of the same 1 KiB batch
# in the same directory, half before and half after each run (its `disk_fdatasync`).
#
# Cores: the server (walrs serve or redis-server) runs under `taskset -c $SERVER_CPUS`
# (default 1) and the load generator (walrs bench or redis-benchmark) under
# `taskset -c $CLIENT_CPUS` (default 0), so neither steals the other's core. The load
# generator's CPU time (user + system, /usr/bin/time, OUT/*.time) and the server's (the
# change of utime + stime in /proc/PID/stat over the run, OUT/*.server-cpu) are recorded per
# run, and the second table divides each by every append of the run, warm-up included (for
# walrs bench its `records_total`; for redis-benchmark its requests). walrs bench's figure
# also holds its raw disk baseline (a write + fdatasync loop: little CPU).
# Results: OUT/results.md (the table), OUT/*.json and *.csv (each run), OUT/run/ (logs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${WALRS:-target/release/walrs}")
OUT=$(realpath -m "${OUT:-target/bench-latency}")
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
BASELINE=${BASELINE:-2}
SERVER_CPUS=${SERVER_CPUS:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
PORT=${PORT:-7290}
REDIS_PORT=${REDIS_PORT:-7291}
REDIS=${REDIS:-1}
VARIANTS=${VARIANTS:-uring uring-dsync uring-dsync-spin portable rpc-drop}
WORKLOADS=${WORKLOADS:-W2 W2half W3}
RUN=$OUT/run
mkdir -p "$OUT" "$RUN"
: > "$OUT/load.txt"
# SERVER, its cleanup on exit, wait_for.
source benches/server-lib.sh

variant_storage() {
  # A "-unchanged" variant stores as the variant without the suffix.
  case ${1%-unchanged} in
    uring) printf 'engine = "uring"\nuring_write = "fdatasync"\n' ;;
    uring-dsync) printf 'engine = "uring"\nuring_write = "dsync"\n' ;;
    uring-dsync-spin) printf 'engine = "uring"\nuring_write = "dsync"\nspin_before_park_us = 50\n' ;;
    uring-inline) printf 'engine = "uring"\nuring_write = "inline"\n' ;;
    uring-batch) printf 'engine = "uring"\nuring_write = "fdatasync"\n' ;;
    uring-noprealloc) printf 'engine = "uring"\nuring_write = "fdatasync"\npreallocate = false\n' ;;
    portable) printf 'engine = "portable"\n' ;;
    portable-noprealloc) printf 'engine = "portable"\npreallocate = false\n' ;;
    rpc-drop) ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

start_walrs() {
  local variant=$1 round=$2 data="$RUN/data-$1-$2"
  variant_storage "$variant" > /dev/null
  if [ "$variant" = rpc-drop ]; then
    # No server: the raw-RPC baseline's service (acks every append at once, stores
    # nothing) as its own process, pinned like a server: the gRPC layer's ceiling.
    taskset -c "$SERVER_CPUS" "$BIN" bench --serve-rpc-baseline "127.0.0.1:$PORT" \
      > "$RUN/$variant-$round.log" 2>&1 &
    SERVER=$!
    wait_for "$RUN/$variant-$round.log" "raw-RPC baseline listening"
    return
  fi
  rm -rf "$data"
  cat > "$RUN/$variant.toml" <<EOF
listen = "127.0.0.1:$PORT"
data_dir = "$data"
[storage]
shards = 1
durability = "fsync"
$(variant_storage "$variant")
[metrics]
enabled = false
$(case $variant in *-unchanged) printf '[server]\nthread_policy = "unchanged"\n' ;; esac)
EOF
  local policy=()
  # uring-batch: every thread of the server SCHED_BATCH (chrt --batch 0), so that a thread
  # woken by another does not preempt it on the shared core (BENCHMARKS.md, session 29).
  if [ "$variant" = uring-batch ]; then policy=(chrt --batch 0); fi
  "${policy[@]}" taskset -c "$SERVER_CPUS" "$BIN" serve --config "$RUN/$variant.toml" > "$RUN/$variant-$round.log" 2>&1 &
  SERVER=$!
  wait_for "$RUN/$variant-$round.log" "serving"
}

stop_server() {
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

# CPU seconds (user + system) the server process has used so far.
server_cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$SERVER/stat"
}

walrs_bench() {
  local name=$1; shift
  echo "$name $(uptime)" >> "$OUT/load.txt"
  local before; before=$(server_cpu_s)
  taskset -c "$CLIENT_CPUS" /usr/bin/time -f "%U %S" -o "$OUT/$name.time" \
    "$BIN" bench --addr "127.0.0.1:$PORT" --no-tls --record-bytes 1024 --batch-records 1 \
    --duration "$DURATION" --warmup "$WARMUP" --baseline "$BASELINE" \
    --dir "$RUN" --quiet --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  echo "$before $(server_cpu_s)" > "$OUT/$name.server-cpu"
}

run_walrs() {
  local variant=$1 round=$2
  start_walrs "$variant" "$round"
  for w in $WORKLOADS; do
    local name="$variant-$w-r$round"
    echo "== $name"
    case $w in
      W2) walrs_bench "$name" --topic "w2" --producers 1 --partitions 1 --depth 1 ;;
      W2half)
        local rate
        rate=$(python3 -c "import json;print(json.load(open('$OUT/$variant-W2-r$round.json'))['append']['records_per_s']/2)")
        walrs_bench "$name" --topic "w2half" --producers 1 --partitions 1 --rate "$rate" --depth 16 ;;
      W3) walrs_bench "$name" --topic "w3" --producers 64 --partitions 4 --depth 1 ;;
      W3one) walrs_bench "$name" --topic "w3one" --producers 64 --partitions 1 --depth 1 ;;
    esac
  done
  stop_server
}

run_redis() {
  local round=$1 dir="$RUN/redis-$round"
  rm -rf "$dir"; mkdir -p "$dir"
  taskset -c "$SERVER_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" \
    --appendonly yes --appendfsync always --save '' > "$dir/log" 2>&1 &
  SERVER=$!
  wait_for "$dir/log" "Ready to accept connections"
  local value
  value=$(head -c 1024 /dev/zero | tr '\0' 'v')
  for clients in 1 64; do
    local name="redis-c$clients-r$round" requests=$((DURATION * (clients == 1 ? 4000 : 20000)))
    echo "== $name"
    echo "$name $(uptime)" >> "$OUT/load.txt"
    local before; before=$(server_cpu_s)
    taskset -c "$CLIENT_CPUS" /usr/bin/time -f "%U %S" -o "$OUT/$name.time" \
      redis-benchmark -p "$REDIS_PORT" -c "$clients" -n "$requests" --csv \
      XADD s '*' f "$value" > "$OUT/$name.csv"
    echo "$before $(server_cpu_s)" > "$OUT/$name.server-cpu"
    echo "$requests" > "$OUT/$name.requests"
  done
  stop_server
}

# Each round starts one system later than the round before (round 1: the order given,
# round 2: from the second, ...): on this kind of shared VM the place in a round moved the
# figures more than some of the changes measured (BENCHMARKS.md, session 28), so no system
# keeps the same place in every round.
SYSTEMS=($VARIANTS)
if [ "$REDIS" = 1 ]; then SYSTEMS+=(redis); fi
for round in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((${#SYSTEMS[@]} - 1))); do
    system=${SYSTEMS[$(( (i + round - 1) % ${#SYSTEMS[@]} ))]}
    if [ "$system" = redis ]; then run_redis "$round"; else run_walrs "$system" "$round"; fi
  done
done

python3 - "$OUT" "$ROUNDS" "$VARIANTS" "$REDIS" > "$OUT/results.md" <<'EOF'
import csv, json, os, statistics, sys
out, rounds, variants, redis = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4] == "1"
def load(name):
    path = f"{out}/{name}.json"
    return json.load(open(path)) if os.path.exists(path) else None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x, f="{:,.0f}"):
    return "–" if x is None else f.format(x)
rows, raw = [], {"rps": [], "p50": [], "p99": []}
print("| system | workload | appends/s (rounds) | median | p50 µs | p99 µs |")
print("|---|---|---|---:|---:|---:|")
for v in variants:
    for w in ["W2", "W2half", "W3", "W3one"]:
        runs = [(r, load(f"{v}-{w}-r{r}")) for r in range(1, rounds + 1)]
        runs = [(r, j) for r, j in runs if j]
        if not runs:
            continue
        rps = [j["append"]["records_per_s"] for _, j in runs]
        p50 = [j["append"]["latency_us"]["p50"] for _, j in runs]
        p99 = [j["append"]["latency_us"]["p99"] for _, j in runs]
        for _, j in runs:
            d = j["baselines"].get("disk_fdatasync")
            if d and w == "W2":
                raw["rps"].append(d["records_per_s"]); raw["p50"].append(d["latency_us"]["p50"]); raw["p99"].append(d["latency_us"]["p99"])
        print(f"| wal.rs {v} | {w} | {' · '.join(fmt(x) for x in rps)} | {fmt(med(rps))} | {fmt(med(p50))} | {fmt(med(p99))} |")
if redis:
    for c, w in [(1, "W2"), (64, "W3")]:
        rps, p50, p99 = [], [], []
        for r in range(1, rounds + 1):
            path = f"{out}/redis-c{c}-r{r}.csv"
            if not os.path.exists(path):
                continue
            row = list(csv.DictReader(open(path)))[0]
            rps.append(float(row["rps"])); p50.append(float(row["p50_latency_ms"]) * 1000); p99.append(float(row["p99_latency_ms"]) * 1000)
        if rps:
            print(f"| Redis 7 Streams, AOF always | {w} | {' · '.join(fmt(x) for x in rps)} | {fmt(med(rps))} | {fmt(med(p50))} | {fmt(med(p99))} |")
print(f"| raw write+fdatasync, 1 thread (bench's disk baseline of the W2 runs) | W2 | {' · '.join(fmt(x) for x in raw['rps'])} | {fmt(med(raw['rps']))} | {fmt(med(raw['p50']))} | {fmt(med(raw['p99']))} |")

# CPU per append, warm-up included: (server, load generator) µs for one run, or None.
def cpu_per_append(name, appends):
    try:
        before, after = map(float, open(f"{out}/{name}.server-cpu").read().split())
        user, system = map(float, open(f"{out}/{name}.time").read().split()[-2:])
    except (OSError, ValueError):
        return None
    return (1e6 * (after - before) / appends, 1e6 * (user + system) / appends)
print()
print("| system | workload | server CPU µs per append (rounds) | median | load generator CPU µs per append (rounds) | median |")
print("|---|---|---|---:|---|---:|")
def cpu_row(label, w, names_appends):
    pairs = [cpu_per_append(n, a) for n, a in names_appends if a]
    pairs = [p for p in pairs if p]
    if pairs:
        s, c = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"| {label} | {w} | {' · '.join(fmt(x, '{:.1f}') for x in s)} | {fmt(med(s), '{:.1f}')} | {' · '.join(fmt(x, '{:.1f}') for x in c)} | {fmt(med(c), '{:.1f}')} |")
for v in variants:
    for w in ["W2", "W2half", "W3", "W3one"]:
        names = [f"{v}-{w}-r{r}" for r in range(1, rounds + 1)]
        cpu_row(f"wal.rs {v}", w, [(n, (load(n) or {}).get("append", {}).get("records_total")) for n in names])
if redis:
    for c, w in [(1, "W2"), (64, "W3")]:
        names = [f"redis-c{c}-r{r}" for r in range(1, rounds + 1)]
        def requests(n):
            try:
                return int(open(f"{out}/{n}.requests").read())
            except (OSError, ValueError):
                return None
        cpu_row("Redis 7 Streams, AOF always", w, [(n, requests(n)) for n in names])
EOF
cat "$OUT/results.md"
