#!/usr/bin/env bash
# Replication on three nodes against a single node, measured from outside (issue 10; figures
# in BENCHMARKS.md, "Issue 10: replication on three nodes").
#
# Usage: benches/cluster-bench.sh [STEP...]   (from anywhere; steps: workloads failover idle,
# all three by default; `summary` reprints the workloads table from OUT's JSON files). Needs a release build (`cargo build --release`; WALRS=path to use
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
#
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
  for n in 1 2 3; do
    if [ ! -f "$CERTS/node-$n.pem" ]; then "$BIN" certs --out "$CERTS" --node "$n" >/dev/null; fi
  done
}

# write_config NAME NODE_ID: RUN/NAME.toml, data under OUT/data/NAME.
write_config() {
  local name=$1 id=$2 port cert key
  if [ "$id" = 0 ]; then port=$PORT_BASE; cert=server; else port=$((PORT_BASE + id)); cert=node-$id; fi
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "data_dir = \"$OUT/data/$name\""
    echo
    echo "[storage]"
    echo "engine = \"auto\""
    echo "durability = \"fsync\""
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
    for n in 1 2 3; do
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
      for n in 1 2 3; do
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
    (setsid "$BIN" serve --config "$RUN/$name.toml" >>"$RUN/$name.log" 2>&1 & echo $! >"$RUN/$name.pid")
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
  stop single node-1 node-2 node-3
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
  local name cpu0=0 cpu1=0
  for name in $servers; do cpu0=$((cpu0 + $(ticks "$(cat "$RUN/$name.pid")"))); done
  watch_start
  # shellcheck disable=SC2086
  /usr/bin/time -f "%U %S" -o "$json.client-cpu" \
    "$BIN" bench --ca "$CERTS/ca.pem" --cert "$CERTS/root.pem" --tls-key "$CERTS/root-key.pem" \
    --addr "$addr" ${WORKLOAD[$w]} --duration "$DURATION" --warmup "$WARMUP" \
    --baseline 0 --quiet --json "$json" >"$OUT/$w-$mode-$round.txt" 2>&1 ||
    echo "bench failed: see $OUT/$w-$mode-$round.txt" | tee -a "$RESULTS" >&2
  local clean=0
  rm -f "$json.compiled"
  watch_stop || { clean=1; touch "$json.compiled"; }
  for name in $servers; do cpu1=$((cpu1 + $(ticks "$(cat "$RUN/$name.pid")"))); done
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

# --- main ---------------------------------------------------------------------------------

make_certs
write_config single 0
for n in 1 2 3; do write_config "node-$n" "$n"; done
say "# cluster-bench $(date -u +%FT%TZ): $(nproc) cores, $(uname -r), $("$BIN" --version 2>/dev/null || echo walrs), steps: $STEPS"
for step in $STEPS; do
  case $step in
    workloads | failover | idle | summary) "$step" ;;
    *) echo "unknown step $step (workloads, failover, idle, summary)" >&2; exit 2 ;;
  esac
done
