#!/usr/bin/env bash
# Replication on three nodes against a single node, measured from outside (issue 10; figures
# in BENCHMARKS.md, "Issue 10: replication on three nodes").
#
# Usage: benches/cluster-bench.sh [STEP...]   (from anywhere; steps: workloads failover idle
# reassign, the first three by default; `summary` reprints the workloads table from OUT's JSON files). Needs a release build (`cargo build --release`; WALRS=path to use
# another binary) and python3 (the failover driver's venv with grpcio is made under OUT).
#
#   workloads  (WORKLOADS="W1 W2 W3" by default) W1 (4 producers, 100 x 1 KiB per append), W2 (1 producer, 1 record, depth 1),
#              W3 (64 producers, 1 record, depth 1, 4 partitions), each run against a fresh
#              single node (node_id = 0) and a fresh three-node cluster (replication factor 3),
#              alternating single / cluster, ROUNDS rounds; `walrs bench --addr` against
#              node 1 of the cluster (its producers follow the leader hints).
#   failover   TRIALS kills (SIGKILL) of partition 0's leader under a one-record-at-a-time
#              appender (benches/cluster_failover.py); default election timeouts.
#   idle       CPU of each node over IDLE_S seconds, with no topic (the floor) and, on a fresh
#              cluster each, with one topic of N partitions x 3 replicas for each N in
#              IDLE_PARTITIONS ("100 1000"), from /proc/PID/stat utime+stime. PERF=1 adds a
#              perf profile of node 1 per N.
#   reassign   (issue 11; not in the default steps) ROUNDS rounds, each on a fresh cluster of
#              four nodes (r-node-1..4 on PORT_BASE+1..+4, static peers 1..4; the topics are
#              created before node 4 starts, so it holds nothing): big/0 (RF 3) filled with
#              REASSIGN_MIB (1024) MiB of 1 KiB records and moved onto node 4 with
#              `walrs cluster reassign` (leader and one follower kept), timed until the
#              command returns and until node 4's segment bytes reach the leader's; the same
#              files copied on the same disk (read, write, fdatasync); then W1 on topic W1 for
#              MOVE_DURATION (60) s with W1/MOVE_PARTITION (0) moved onto node 4 MOVE_AT (20) s
#              in, W1's throughput per second from its progress line (benches/bench_timeline.py).
#
# PERF=1 records a system-wide `perf record -a --call-graph dwarf` over each workload run (warm-up included)
# into OUT/W-MODE-ROUND.perf.data.
# DURABILITY (fsync) is every server's `storage.durability`.
# CLUSTER_STORAGE is more `[storage]` lines for the three cluster nodes only (e.g. "shards = 1").
# CLUSTER_EXTRA is more `[cluster]` lines for them (e.g. "replication_inflight_max = 1").
# SERVER_PREFIX, when set, is a command every server runs under (e.g. "chrt --batch 0", or
# "benches/cpu-budget.sh 500" for half a core each, as if every node had a machine of its own).
# Every server listens on 127.0.0.1 only: the single node on PORT_BASE, nodes 1-3 on
# PORT_BASE+1..+3; metrics are off. Mutual TLS everywhere (certificates under OUT/certs, node
# certificates from `walrs certs --node N`), durability fsync, engine auto, default shards.
# Before every measured run the script waits until no compiler has run for 10 s (the machine
# is shared), watches for one during the run, and redoes a run that saw one (up to 3 tries).
# Results: OUT/results.txt (human), OUT/*.json (each run), OUT/run/*.log (server logs).
# Every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${WALRS:-target/release/walrs}")
OUT=$(realpath -m "${OUT:-target/bench-cluster}")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
TRIALS=${TRIALS:-20}
IDLE_S=${IDLE_S:-30}
IDLE_PARTITIONS=${IDLE_PARTITIONS:-100 1000}
PORT_BASE=${PORT_BASE:-7180}
REASSIGN_MIB=${REASSIGN_MIB:-1024}
MOVE_DURATION=${MOVE_DURATION:-60}
MOVE_AT=${MOVE_AT:-20}
MOVE_PARTITION=${MOVE_PARTITION:-0}
REASSIGN_TIMEOUT_S=${REASSIGN_TIMEOUT_S:-600}
STEPS=${*:-workloads failover idle}
RUN=$OUT/run
CERTS=$OUT/certs
RESULTS=$OUT/results.txt
mkdir -p "$OUT" "$RUN"

say() { echo "$*" | tee -a "$RESULTS"; }

# --- the shared machine -------------------------------------------------------------------

# IGNORE_COMPILERS=1 skips the wait (idle CPU is the nodes' own CPU time, which another
# load on the machine barely moves; throughput and latency need the wait).
compiling() {
  [ -n "${IGNORE_COMPILERS:-}" ] && return 1
  pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null || pgrep -x cc1plus >/dev/null ||
    pgrep -f 'cargo (build|test|clippy|bench|check)' >/dev/null
}

# Returns once no compiler has been seen for 10 consecutive seconds (polled every 2 s).
wait_quiet() {
  local quiet=0 waited=0
  while [ $quiet -lt 10 ]; do
    if compiling; then quiet=0; else quiet=$((quiet + 2)); fi
    sleep 2
    waited=$((waited + 2))
  done
  [ $waited -le 10 ] || echo "  (waited ${waited}s for a quiet machine)" >&2
}

# Watches for a compiler in the background until watch_stop; watch_stop says whether one ran.
watch_start() {
  rm -f "$RUN/compile-seen"
  (while :; do compiling && touch "$RUN/compile-seen"; sleep 1; done) &
  WATCHER=$!
}
watch_stop() {
  kill "$WATCHER" 2>/dev/null || true
  wait "$WATCHER" 2>/dev/null || true
  WATCHER=
  [ ! -e "$RUN/compile-seen" ]
}

load() { cut -d' ' -f1 /proc/loadavg; }

# --- servers ------------------------------------------------------------------------------

make_certs() {
  if [ ! -f "$CERTS/ca.pem" ]; then "$BIN" certs --out "$CERTS" >/dev/null; fi
  for n in 1 2 3 4; do
    if [ ! -f "$CERTS/node-$n.pem" ]; then "$BIN" certs --out "$CERTS" --node "$n" >/dev/null; fi
  done
}

# write_config NAME NODE_ID [NODES]: RUN/NAME.toml, data under OUT/data/NAME; a cluster
# node's static peers (and the node identities granted `replicate`) are NODES ("1 2 3").
write_config() {
  local name=$1 id=$2 nodes=${3:-1 2 3} port cert key
  if [ "$id" = 0 ]; then port=$PORT_BASE; cert=server; else port=$((PORT_BASE + id)); cert=node-$id; fi
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "data_dir = \"$OUT/data/$name\""
    echo
    echo "[storage]"
    echo "engine = \"auto\""
    echo "durability = \"${DURABILITY:-fsync}\""
    if [ "$id" != 0 ] && [ -n "${CLUSTER_STORAGE:-}" ]; then echo "$CLUSTER_STORAGE"; fi
    echo
    echo "[tls]"
    echo "cert = \"$CERTS/$cert.pem\""
    echo "key = \"$CERTS/$cert-key.pem\""
    echo "client_ca = \"$CERTS/ca.pem\""
    echo
    echo "[[acl]]"
    echo "identity = \"root\""
    echo "topics = [\"*\"]"
    echo "actions = [\"produce\", \"consume\", \"admin\"]"
    for n in $nodes; do
      echo
      echo "[[acl]]"
      echo "identity = \"node-$n\""
      echo "topics = [\"*\"]"
      echo "actions = [\"replicate\"]"
    done
    echo
    echo "[metrics]"
    echo "enabled = false"
    echo
    echo "[cluster]"
    echo "node_id = $id"
    if [ "$id" != 0 ]; then
      echo "replication_factor = 3"
      if [ -n "${CLUSTER_EXTRA:-}" ]; then echo "$CLUSTER_EXTRA"; fi
      for n in $nodes; do
        [ "$n" = "$id" ] && continue
        echo
        echo "[[cluster.peers]]"
        echo "id = $n"
        echo "addr = \"127.0.0.1:$((PORT_BASE + n))\""
      done
    fi
  } >"$RUN/$name.toml"
}

client() { "$BIN" "$@" --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --tls-key "$CERTS/root-key.pem"; }

# start NAME...: fresh data, one `walrs serve` each; returns once each answers ListTopics.
start() {
  local name
  for name in "$@"; do
    rm -rf "$OUT/data/$name"
    echo "=== start $(date -u +%T)" >>"$RUN/$name.log"
    # In a subshell, so that this shell does not report the job when a node is killed.
    # SERVER_PREFIX (unquoted on purpose: a command and its words) runs before each server,
    # e.g. SERVER_PREFIX="chrt --batch 0" (BENCHMARKS.md, session 29).
    # shellcheck disable=SC2086
    (setsid ${SERVER_PREFIX:-} "$BIN" serve --config "$RUN/$name.toml" >>"$RUN/$name.log" 2>&1 & echo $! >"$RUN/$name.pid")
  done
  for name in "$@"; do
    local addr tries=0
    addr=$(sed -n 's/^listen = "\(.*\)"/\1/p' "$RUN/$name.toml")
    until client topic list --addr "$addr" --retry-for-ms 0 >/dev/null 2>&1; do
      tries=$((tries + 1))
      if [ $tries -gt 100 ]; then echo "$name did not start: see $RUN/$name.log" >&2; exit 1; fi
      sleep 0.1
    done
  done
}

# stop NAME...: SIGTERM, then SIGKILL after 15 s; data removed.
stop() {
  local name pid
  for name in "$@"; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for name in "$@"; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) ignored SIGTERM for 15 s: killed" | tee -a "$RESULTS" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$name.pid"
    rm -rf "$OUT/data/$name"
  done
}

WATCHER=
cleanup() {
  [ -n "$WATCHER" ] && kill "$WATCHER" 2>/dev/null
  stop single node-1 node-2 node-3 r-node-1 r-node-2 r-node-3 r-node-4
  # The empty cgroups of servers run under benches/cpu-budget.sh.
  case "${SERVER_PREFIX:-}" in *cpu-budget*) benches/cpu-budget.sh clean ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- workloads ----------------------------------------------------------------------------

declare -A WORKLOAD=(
  [W1]="--producers 4 --partitions 4 --batch-records 100 --record-bytes 1024 --depth 4"
  [W2]="--producers 1 --partitions 1 --batch-records 1 --record-bytes 1024 --depth 1"
  [W3]="--producers 64 --partitions 4 --batch-records 1 --record-bytes 1024 --depth 1"
)

# bench_once W MODE ROUND: one run on fresh servers; 0 when it was clean.
bench_once() {
  local w=$1 mode=$2 round=$3 addr servers json load0
  if [ "$mode" = single ]; then servers=single; addr=127.0.0.1:$PORT_BASE;
  else servers="node-1 node-2 node-3"; addr=127.0.0.1:$((PORT_BASE + 1)); fi
  json=$OUT/$w-$mode-$round.json
  # shellcheck disable=SC2086
  start $servers
  sleep 1
  wait_quiet
  load0=$(load)
  # The servers' CPU time (utime + stime, clock ticks) over the whole run, warm-up included.
  local name cpu0=0 cpu1=0 perf_pid=
  declare -A node0
  for name in $servers; do
    node0[$name]=$(ticks "$(cat "$RUN/$name.pid")")
    cpu0=$((cpu0 + node0[$name]))
  done
  watch_start
  if [ -n "${PERF:-}" ]; then
    perf record -a --call-graph dwarf,16384 -F 199 -o "$OUT/$w-$mode-$round.perf.data" -- sleep $((WARMUP + DURATION)) \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  # shellcheck disable=SC2086
  /usr/bin/time -f "%U %S" -o "$json.client-cpu" \
    "$BIN" bench --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --tls-key "$CERTS/root-key.pem" \
    --addr "$addr" ${WORKLOAD[$w]} --duration "$DURATION" --warmup "$WARMUP" \
    --baseline 0 --quiet --json "$json" >"$OUT/$w-$mode-$round.txt" 2>&1 ||
    echo "bench failed: see $OUT/$w-$mode-$round.txt" | tee -a "$RESULTS" >&2
  local clean=0
  rm -f "$json.compiled"
  watch_stop || { clean=1; touch "$json.compiled"; }
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  local per_node=
  for name in $servers; do
    local t
    t=$(ticks "$(cat "$RUN/$name.pid")")
    cpu1=$((cpu1 + t))
    per_node="$per_node $name=$(((t - node0[$name]) * 100 / $(getconf CLK_TCK)))cs"
  done
  [ "$mode" = single ] || say "  $w $mode round $round, CPU per server (centiseconds):$per_node"
  # shellcheck disable=SC2086
  stop $servers
  python3 - "$json" "$w" "$mode" "$round" "$load0" "$(load)" "$clean" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$(tail -n1 "$json.client-cpu" 2>/dev/null)" <<'PY' | tee -a "$RESULTS"
import json, sys
path, w, mode, rnd, l0, l1, dirty, cpu, hz, client = sys.argv[1:]
try:
    client_s = sum(float(x) for x in client.split())
except ValueError:
    client_s = float("nan")
try:
    a = json.load(open(path))["append"]
except Exception as e:
    print(f"{w} {mode} round {rnd}: no result ({e})"); sys.exit()
l = a["latency_us"]
print(f"{w} {mode:7} round {rnd}: {a['records_per_s']:.0f} records/s, {a['requests_per_s']:.0f} appends/s, "
      f"{a['mb_per_s']:.1f} MB/s, p50 {l['p50']} us, p99 {l['p99']} us, retries {a.get('retries')}, "
      f"servers' CPU {int(cpu) / int(hz):.1f} s = {int(cpu) / int(hz) * 1e6 / max(a['records_total'], 1):.2f} us per record, "
      f"load generator's {client_s:.1f} s = {client_s * 1e6 / max(a['records_total'], 1):.2f} us per record, "
      f"load {l0} -> {l1}{'  (COMPILE SEEN: discarded)' if dirty == '1' else ''}")
PY
  return $clean
}

workloads() {
  say "## workloads: $ROUNDS rounds, ${DURATION}s each after ${WARMUP}s warm-up ($(date -u +%FT%TZ))"
  local round w mode try
  for round in $(seq "$ROUNDS"); do
    for w in ${WORKLOADS:-W1 W2 W3}; do
      for mode in single cluster; do
        for try in 1 2 3; do
          if bench_once "$w" "$mode" "$round"; then break; fi
        done
      done
    done
  done
  summary
}

# The table of medians from the JSON files of the workloads step (a run during which a
# compiler ran after 3 tries is marked with * and still counted).
summary() {
  python3 - "$OUT" "$ROUNDS" <<'PY' | tee -a "$RESULTS"
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("| workload | single: rounds (records/s) | replicated: rounds | single median | replicated median | replicated / single |")
print("|---|---|---|---:|---:|---:|")
lat = []
for w in ("W1", "W2", "W3"):
    med, runs = {}, {}
    for mode in ("single", "cluster"):
        xs = []
        for r in range(1, rounds + 1):
            try:
                a = json.load(open(f"{out}/{w}-{mode}-{r}.json"))["append"]
                a["mark"] = "*" if os.path.exists(f"{out}/{w}-{mode}-{r}.json.compiled") else ""
                xs.append(a)
            except Exception:
                pass
        runs[mode] = xs
        med[mode] = statistics.median(a["records_per_s"] for a in xs) if xs else float("nan")
        for key in ("p50", "p99"):
            if xs:
                lat.append((w, mode, key, statistics.median(a["latency_us"][key] for a in xs)))
    fmt = lambda xs: " · ".join(f"{a['records_per_s']:,.0f}{a['mark']}" for a in xs)
    print(f"| {w} | {fmt(runs['single'])} | {fmt(runs['cluster'])} | {med['single']:,.0f} | "
          f"{med['cluster']:,.0f} | **{med['cluster'] / med['single']:.2f}** |")
print()
for w, mode, key, v in lat:
    print(f"{w} {mode} median {key}: {v / 1000:.2f} ms")
PY
}

# --- failover -----------------------------------------------------------------------------

stubs() {
  local venv=$OUT/venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q grpcio grpcio-tools
  fi
  mkdir -p "$OUT/py"
  "$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$OUT/py" \
    --grpc_python_out="$OUT/py" proto/walrs/v1/log.proto
  PY=$venv/bin/python
}

failover() {
  stubs
  say "## failover: $TRIALS trials, default election timeouts ($(date -u +%FT%TZ))"
  start node-1 node-2 node-3
  wait_quiet
  local load0
  load0=$(load)
  watch_start
  "$PY" benches/cluster_failover.py --run "$RUN" --stubs "$OUT/py" --bin "$BIN" \
    --nodes "1=127.0.0.1:$((PORT_BASE + 1)),2=127.0.0.1:$((PORT_BASE + 2)),3=127.0.0.1:$((PORT_BASE + 3))" \
    --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --key "$CERTS/root-key.pem" \
    --trials "$TRIALS" --json "$OUT/failover.json" 2> >(tee -a "$RESULTS" >&2) >/dev/null ||
    say "failover driver failed"
  watch_stop || say "(a compiler ran during the failover trials)"
  say "load $load0 -> $(load)"
  stop node-1 node-2 node-3
  python3 - "$OUT/failover.json" <<'PY' | tee -a "$RESULTS"
import json, sys
r = json.load(open(sys.argv[1]))
v = [t["failover_ms"] for t in r["trials"]]
print(f"failover p50 {r['failover_ms_p50']:.0f} ms, max {r['failover_ms_max']:.0f} ms over {len(v)} trials; "
      f"{r['acks']} acks, {r['append_retries']} retried attempts {r['append_errors']}")
print("all (ms): " + ", ".join(f"{x:.0f}" for x in v))
c = [t["catch_up_ms"] for t in r["trials"] if t.get("catch_up_ms") is not None]
if c:
    print("catch-up after restart (ms): " + ", ".join(f"{x:.0f}" for x in c))
PY
}

# --- idle CPU -----------------------------------------------------------------------------

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_over SECONDS LABEL: % of one core of each node over SECONDS.
cpu_over() {
  local secs=$1 label=$2 hz n before=() after=() pids=()
  hz=$(getconf CLK_TCK)
  for n in 1 2 3; do pids+=("$(cat "$RUN/node-$n.pid")"); done
  wait_quiet
  local load0
  load0=$(load)
  watch_start
  for n in 0 1 2; do before+=("$(ticks "${pids[$n]}")"); done
  local t0 t1
  t0=$(date +%s.%N)
  sleep "$secs"
  for n in 0 1 2; do after+=("$(ticks "${pids[$n]}")"); done
  t1=$(date +%s.%N)
  local dirty=""
  watch_stop || dirty="  (COMPILE SEEN)"
  python3 - "$label" "$hz" "$t0" "$t1" "$IDLE_PARTITIONS" "${before[*]}" "${after[*]}" "$load0" "$(load)" "$dirty" <<'PY' | tee -a "$RESULTS"
import sys
label, hz, t0, t1, parts, b, a, l0, l1, dirty = sys.argv[1:]
hz, secs = int(hz), float(t1) - float(t0)
pcts = [(int(y) - int(x)) / hz / secs * 100 for x, y in zip(b.split(), a.split())]
per = ", ".join(f"node-{i + 1} {p:.2f}%" for i, p in enumerate(pcts))
print(f"{label}: {secs:.1f}s, % of one core: {per}; mean {sum(pcts) / 3:.2f}%; load {l0} -> {l1}{dirty}")
PY
}

# leaderless N PARTITIONS: how many partitions node N sees without a leader ("?" when
# DescribeTopic fails or does not list them all).
leaderless() {
  { client topic describe idle --addr "127.0.0.1:$((PORT_BASE + $1))" --retry-for-ms 2000 2>/dev/null || true; } |
    awk -v want="$2" '$1 ~ /^[0-9]+$/ { total++; if ($6 == 0) m++ }
      END { if (total == want) print m + 0; else print "?" }'
}

idle() {
  say "## idle CPU: ${IDLE_S}s each ($(date -u +%FT%TZ), CLK_TCK $(getconf CLK_TCK))"
  start node-1 node-2 node-3
  sleep 5
  cpu_over "$IDLE_S" "no topic (floor)"
  local count n t0 t1 missing deadline
  for count in $IDLE_PARTITIONS; do
    stop node-1 node-2 node-3
    start node-1 node-2 node-3
    sleep 2
    t0=$(date +%s.%N)
    # A refusal is recorded, not worked around: the measurement goes on with what exists.
    client topic create idle --partitions "$count" --addr "127.0.0.1:$((PORT_BASE + 1))" \
      >"$RUN/create-$count.txt" 2>&1 || say "topic create ($count partitions) answered: $(cat "$RUN/create-$count.txt")"
    t1=$(date +%s.%N)
    say "topic create, $count partitions x 3 replicas: returned after $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
    # Every partition has a leader, as each node sees it (up to LEADER_WAIT_S).
    deadline=$((SECONDS + ${LEADER_WAIT_S:-90}))
    for n in 1 2 3; do
      while :; do
        missing=$(leaderless "$n" "$count")
        [ "$missing" = 0 ] && break
        [ $SECONDS -ge $deadline ] && break
        sleep 1
      done
      say "node-$n: partitions without a leader: $missing (\"?\" = DescribeTopic failed) at $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s after the create"
    done
    { client topic describe idle --addr "127.0.0.1:$((PORT_BASE + 1))" --retry-for-ms 2000 2>/dev/null || true; } |
      awk '$1 ~ /^[0-9]+$/ { c[$6]++ } END { for (l in c) printf "leader %s: %d partitions; ", l, c[l]; print "" }' |
      tee -a "$RESULTS"
    sleep 5
    cpu_over "$IDLE_S" "$count partitions x 3 replicas, idle"
    if [ -n "${PERF:-}" ] && command -v perf >/dev/null; then
      perf record -e cpu-clock -F 500 --call-graph dwarf,16384 -o "$OUT/idle-$count.perf.data" \
        -p "$(cat "$RUN/node-1.pid")" -- sleep 5 >/dev/null 2>&1
      perf report -i "$OUT/idle-$count.perf.data" --stdio --children --sort sym --percent-limit 3 \
        -g none >"$OUT/idle-$count.perf.txt" 2>/dev/null || true
      say "perf profile of node-1 ($count partitions): $OUT/idle-$count.perf.txt"
    fi
    { grep -hc 'shard queue saturated' "$RUN"/node-?.log || true; } | paste -sd' ' |
      sed 's/^/"shard queue saturated" warnings so far, nodes 1-3: /' | tee -a "$RESULTS"
  done
  stop node-1 node-2 node-3
}

# --- reassign -----------------------------------------------------------------------------

# Four nodes r-node-1..4 on PORT_BASE+1..+4, each with static peers 1..4 and ACLs granting
# node-1..4 `replicate`. Nodes 1-3 start first and both topics are created while node 4 is
# down, so that placement (alive nodes only) leaves node 4 out; node 4 then starts empty, as
# README's "Adding a node" has it, and every move below is onto node 4.
RNODES="r-node-1 r-node-2 r-node-3 r-node-4"
raddr() { echo "127.0.0.1:$((PORT_BASE + $1))"; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }

# describe_row NODE TOPIC PARTITION: "end leader replicas leader_epoch" of the partition as
# NODE sees it (DescribeTopic answers with the offsets of the node's own replica; 0 when it
# holds none).
describe_row() {
  client topic describe "$2" --addr "$(raddr "$1")" --retry-for-ms 5000 2>/dev/null |
    awk -v p="$3" '$1 == p { print $3, $6, $7, $8 }'
}

# new_replicas LEADER REPLICAS TARGET: the leader, the first other replica listed, and
# TARGET (the remaining follower is the one replaced).
new_replicas() {
  local keep
  keep=$(echo "$2" | tr ',' '\n' | grep -vx "$1" | head -n1)
  echo "$1,$keep,$3"
}

rdir() { echo "$OUT/data/r-node-$1/topics/$2/$3"; }

# log_bytes DIR: bytes of the replica's segment files (*.log; 0 when none yet).
log_bytes() { find "$1" -name '*.log' -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

# wait_alive ID: until node 1's gossip sees node ID alive (30 s at most).
wait_alive() {
  local tries=0
  until client cluster status --json --addr "$(raddr 1)" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if any(n["id"] == int(sys.argv[1]) and n["alive"] for n in s["nodes"]) else 1)' "$1"; do
    tries=$((tries + 1))
    if [ $tries -gt 60 ]; then say "node $1 not seen alive by node 1 after 30 s"; return 1; fi
    sleep 0.5
  done
}

# a. big/0 gets REASSIGN_MIB MiB of 1 KiB records (1 MiB batches, 2 producers), then moves
# onto node 4 with no other load. Two times: until `walrs cluster reassign` returns, and
# until node 4's segment bytes reach the leader's (sampled every 0.2 s: the catch-up curve).
move_big() {
  local round=$1 j=$2 t0 t1 end leader replicas epoch new want dst
  t0=$(now)
  "$BIN" bench --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --tls-key "$CERTS/root-key.pem" \
    --addr "$(raddr 1)" --topic big --partitions 1 --producers 2 --depth 4 \
    --batch-records 1024 --record-bytes 1024 --records $((REASSIGN_MIB * 1024)) \
    --warmup 0 --baseline 0 --quiet --json "$j.fill.json" >"$j.fill.txt" 2>&1 ||
    say "round $round: the fill failed: see $j.fill.txt"
  t1=$(now)
  read -r end leader replicas epoch <<<"$(describe_row 1 big 0)"
  read -r end _ <<<"$(describe_row "$leader" big 0)"
  say "round $round: big/0 filled with $end offsets in $(calc "round($t1 - $t0, 1)") s; leader $leader, replicas $replicas, epoch $epoch"
  if [[ ",$replicas," == *,4,* ]]; then say "round $round: placement put big/0 on node 4"; return 1; fi
  new=$(new_replicas "$leader" "$replicas" 4)
  R_SRC=$(rdir "$leader" big 0)
  R_SRC_BYTES=$(du -sb "$R_SRC" | cut -f1)
  want=$(log_bytes "$R_SRC")
  dst=$(rdir 4 big 0)
  sleep 2
  R_LOAD_MOVE=$(load)
  R_M0=$(now)
  (for _ in $(seq $((REASSIGN_TIMEOUT_S * 5))); do
    b=$(log_bytes "$dst")
    echo "$(now) $b"
    [ "$b" -ge "$want" ] && break
    sleep 0.2
  done) >"$j.catch-up.txt" &
  local sampler=$!
  client cluster reassign big/0 --replicas "$new" --addr "$(raddr 1)" --timeout-s "$REASSIGN_TIMEOUT_S" \
    >"$j.reassign.txt" 2>&1 || say "round $round: reassign big/0 failed: $(tail -n1 "$j.reassign.txt")"
  R_M1=$(now)
  R_AT_RETURN=$(log_bytes "$dst")
  wait "$sampler" || true
  R_MC=$(tail -n1 "$j.catch-up.txt" | cut -d' ' -f1)
  [ "$(tail -n1 "$j.catch-up.txt" | cut -d' ' -f2)" -ge "$want" ] || R_MC=
  R_LOAD_MOVE="$R_LOAD_MOVE -> $(load)"
  sleep 1
  R_DST_BYTES=$(du -sb "$dst" | cut -f1)
  say "round $round: reassign big/0 $replicas -> $new returned after $(calc "round($R_M1 - $R_M0, 2)") s with node 4 holding $R_AT_RETURN of the leader's $want segment bytes; node 4 caught up after $( [ -n "$R_MC" ] && calc "round($R_MC - $R_M0, 2)" || echo "(not within ${REASSIGN_TIMEOUT_S} s)") s; du: leader $R_SRC_BYTES, node 4 $R_DST_BYTES bytes; after (end leader replicas epoch): $(for n in 1 2 3 4; do printf 'node %s: %s; ' "$n" "$(describe_row "$n" big 0)"; done)load $R_LOAD_MOVE"
}

# b. The same bytes copied on the same disk: the leader's files read, written to a new
# directory, fdatasync per file (and the directory fsynced); the source's pages in the page
# cache beforehand are counted (fincore), not dropped.
raw_copy() {
  local round=$1 copy=$OUT/data/raw-copy
  R_CACHED=$(find "$R_SRC" -type f -exec fincore -b -n -o RES {} + 2>/dev/null | awk '{s += $1} END {print s + 0}')
  rm -rf "$copy"
  R_LOAD_COPY=$(load)
  R_COPY_S=$(python3 - "$R_SRC" "$copy" <<'PY'
import os, sys, time
src, dst = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
for root, _, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(out, exist_ok=True)
    for name in files:
        with open(os.path.join(root, name), "rb") as i, open(os.path.join(out, name), "wb") as o:
            while chunk := i.read(1 << 20):
                o.write(chunk)
            o.flush()
            os.fdatasync(o.fileno())
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
print(f"{time.monotonic() - t0:.3f}")
PY
)
  R_LOAD_COPY="$R_LOAD_COPY -> $(load)"
  rm -rf "$copy"
  say "round $round: raw copy of the leader's $R_SRC_BYTES bytes: $R_COPY_S s = $(calc "round($R_SRC_BYTES / $R_COPY_S / 1e6)") MB/s ($R_CACHED bytes of the source in the page cache before); load $R_LOAD_COPY"
}

# c. W1 on topic W1 for MOVE_DURATION s after WARMUP s, its progress line recorded every
# 0.5 s (benches/bench_timeline.py); MOVE_AT s into the measured part, W1/MOVE_PARTITION
# moves onto node 4 (its leader and one follower kept). The move lasts until node 4 holds
# what the leader held when the command returned (node 4's DescribeTopic, polled each second).
move_under_w1() {
  local round=$1 j=$2 end leader replicas epoch new target n4 bench
  sleep 2
  R_LOAD_W1=$(load)
  # shellcheck disable=SC2086
  python3 benches/bench_timeline.py run --csv "$j.w1.csv" -- \
    timeout -k 10 $((MOVE_DURATION + WARMUP + 120)) \
    "$BIN" bench --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --tls-key "$CERTS/root-key.pem" \
    --addr "$(raddr 1)" --topic W1 ${WORKLOAD[W1]} --duration "$MOVE_DURATION" --warmup "$WARMUP" \
    --baseline 0 --json "$j.w1.json" >"$j.w1.txt" &
  bench=$!
  sleep $((WARMUP + MOVE_AT))
  read -r end leader replicas epoch <<<"$(describe_row 1 W1 "$MOVE_PARTITION")"
  read -r end _ <<<"$(describe_row "$leader" W1 "$MOVE_PARTITION")"
  new=$(new_replicas "$leader" "$replicas" 4)
  R_LOAD_W1="$R_LOAD_W1 (start), $(load) (move)"
  R_W0=$(now)
  client cluster reassign "W1/$MOVE_PARTITION" --replicas "$new" --addr "$(raddr 1)" --timeout-s 180 \
    >"$j.w1-reassign.txt" 2>&1 || say "round $round: reassign W1/$MOVE_PARTITION failed: $(tail -n1 "$j.w1-reassign.txt")"
  R_W1=$(now)
  local now_leader
  read -r _ now_leader _ <<<"$(describe_row 1 W1 "$MOVE_PARTITION")"
  read -r target _ <<<"$(describe_row "${now_leader:-$leader}" W1 "$MOVE_PARTITION")"
  R_WC=
  for _ in $(seq 180); do
    read -r n4 _ <<<"$(describe_row 4 W1 "$MOVE_PARTITION")"
    if [ "${n4:-0}" -ge "${target:-0}" ]; then R_WC=$(now); break; fi
    sleep 1
  done
  R_LOAD_W1="$R_LOAD_W1, $(load) (moved)"
  wait "$bench" || say "round $round: W1 failed or timed out: see $j.w1.txt and $j.w1.csv.stderr"
  R_LOAD_W1="$R_LOAD_W1, $(load) (end)"
  # Each node's replica of the moved partition once the load has stopped: one left behind
  # shows here.
  for n in 1 2 3 4; do echo "node $n: $(describe_row "$n" W1 "$MOVE_PARTITION")"; done >"$j.w1-after.txt"
  say "round $round: W1/$MOVE_PARTITION (end $end at the leader, leader $leader, epoch $epoch) $replicas -> $new under W1: the command returned after $(calc "round($R_W1 - $R_W0, 2)") s, node 4 caught up to offset $target after $( [ -n "$R_WC" ] && calc "round($R_WC - $R_W0, 2)" || echo "(never, 180 s)") s; after the run (end leader replicas epoch): $(paste -sd';' "$j.w1-after.txt"); load $R_LOAD_W1"
  python3 benches/bench_timeline.py summary --csv "$j.w1.csv" --move-start "$R_W0" \
    --move-end "${R_WC:-$R_W1}" >"$j.w1-timeline.json"
}

# reassign_once ROUND: a fresh four-node cluster, a, b, c; 0 when no compiler ran meanwhile.
reassign_once() {
  local round=$1 j=$OUT/reassign-$round n clean=0 marks=()
  rm -f "$j".*
  for n in 1 2 3 4; do marks+=("$(cat "$RUN/r-node-$n.log" 2>/dev/null | wc -l)"); done
  start r-node-1 r-node-2 r-node-3
  if ! { client topic create big --partitions 1 --addr "$(raddr 1)" &&
    client topic create W1 --partitions 4 --addr "$(raddr 1)"; } >"$j.create.txt" 2>&1; then
    say "round $round: topic create failed: $(tail -n1 "$j.create.txt")"
    return 1
  fi
  start r-node-4
  wait_alive 4 || return 1
  wait_quiet
  watch_start
  move_big "$round" "$j" || { watch_stop || true; return 1; }
  raw_copy "$round"
  move_under_w1 "$round" "$j"
  watch_stop || { clean=1; say "round $round: a compiler ran during it"; }
  for n in 1 2 3 4; do
    tail -n +"$((marks[n - 1] + 1))" "$RUN/r-node-$n.log" >"$j.node-$n.log"
    say "round $round: node $n logged $(grep -c ' WARN ' "$j.node-$n.log") WARN (slow fsync $(grep -c 'slow fsync' "$j.node-$n.log")), $(grep -c ' ERROR ' "$j.node-$n.log") ERROR, $(grep -c 'partition leader changed topic=W1' "$j.node-$n.log") W1 leader changes"
  done
  # shellcheck disable=SC2086
  stop $RNODES
  python3 - "$j" "$round" "$R_SRC_BYTES" "$R_DST_BYTES" "$R_AT_RETURN" "$R_M0" "$R_M1" "${R_MC:-nan}" \
    "$R_COPY_S" "$R_CACHED" "$R_W0" "$R_W1" "${R_WC:-nan}" "$clean" <<'PY' | tee -a "$RESULTS"
import json, sys
j, rnd = sys.argv[1], int(sys.argv[2])
src_b, dst_b, at_ret = (int(x) for x in sys.argv[3:6])
m0, m1, mc, copy_s = (float(x) for x in sys.argv[6:10])
cached = int(sys.argv[10])
w0, w1, wc = (float(x) for x in sys.argv[11:14])
dirty = sys.argv[14] != "0"
t = json.load(open(j + ".w1-timeline.json"))
try:
    a = json.load(open(j + ".w1.json"))["append"]
except Exception:
    a = {"records_per_s": None, "latency_us": None, "retries": None}
r = {
    "round": rnd, "leader_bytes": src_b, "node4_bytes": dst_b, "node4_log_bytes_at_return": at_ret,
    "reassign_return_s": m1 - m0, "reassign_caught_up_s": mc - m0,
    "reassign_mb_per_s": src_b / (mc - m0) / 1e6,
    "copy_s": copy_s, "copy_mb_per_s": src_b / copy_s / 1e6, "copy_source_cached_bytes": cached,
    "caught_up_over_copy": (mc - m0) / copy_s,
    "w1_move_return_s": w1 - w0, "w1_move_caught_up_s": wc - w0,
    "w1": {"records_per_s": a["records_per_s"], "latency_us": a["latency_us"],
           "retries": a["retries"], "timeline": t},
    "compile_seen": dirty,
}
json.dump(r, open(j + ".json", "w"), indent=1)
b, d, f = t["before"], t["during"], t["after"]
l = a["latency_us"] or {}
n = lambda x: "-" if x is None else f"{x:,.0f}"
print(f"round {rnd}: big/0 {src_b / 2**20:.0f} MiB: reassign returned {m1 - m0:.1f} s, node 4 caught up "
      f"{mc - m0:.1f} s = {r['reassign_mb_per_s']:.0f} MB/s; raw copy {copy_s:.1f} s = "
      f"{r['copy_mb_per_s']:.0f} MB/s; caught-up / copy {r['caught_up_over_copy']:.1f}. W1 records/s: "
      f"median before {n(b['median_records_per_s'])}, min during {n(d['min_records_per_s'])} "
      f"(median {n(d['median_records_per_s'])} over {d['seconds']} s), median after "
      f"{n(f['median_records_per_s'])}; worst 0.5 s window p99 before/during/after "
      f"{b['worst_window_p99_ms']}/{d['worst_window_p99_ms']}/{f['worst_window_p99_ms']} ms; whole run "
      f"{n(a['records_per_s'])} records/s, p99.9 {l.get('p999')} us, max {l.get('max')} us, "
      f"retries {a['retries']}{'  (COMPILE SEEN)' if dirty else ''}")
PY
  return $clean
}

reassign() {
  say "## reassign: $ROUNDS rounds, big/0 = $REASSIGN_MIB MiB, W1 for ${MOVE_DURATION}s with W1/$MOVE_PARTITION moved ${MOVE_AT}s in ($(date -u +%FT%TZ))"
  local n round try
  for n in 1 2 3 4; do write_config "r-node-$n" "$n" "1 2 3 4"; done
  for round in $(seq "$ROUNDS"); do
    for try in 1 2 3; do
      if reassign_once "$round"; then break; fi
      # shellcheck disable=SC2086
      stop $RNODES
    done
  done
}

# --- main ---------------------------------------------------------------------------------

make_certs
write_config single 0
for n in 1 2 3; do write_config "node-$n" "$n"; done
say "# cluster-bench $(date -u +%FT%TZ): $(nproc) cores, $(uname -r), $("$BIN" --version 2>/dev/null || echo walrs), steps: $STEPS"
for step in $STEPS; do
  case $step in
    workloads | failover | idle | summary | reassign) "$step" ;;
    *) echo "unknown step $step (workloads, failover, idle, summary, reassign)" >&2; exit 2 ;;
  esac
done
