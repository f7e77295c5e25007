#!/usr/bin/env bash
# How long the others take to declare a node killed with SIGKILL dead (issue 11): starts the
# three nodes of cluster/node-N.toml (defaults: gossip every 500 ms,
# failure_detector_dead_after_ms = 4000) on a scratch copy, then TRIALS times kills node 3,
# polls `walrs cluster status --json` on node 1 every POLL_MS until it says node 3 is
# "dead", restarts node 3 and waits until it is "alive" again. Prints one line per trial and
# p50 / max at the end. Run from the repository root after `cargo build --release`.
set -euo pipefail
BIN=${WALRS:-./target/release/walrs}
TRIALS=${TRIALS:-20}
POLL_MS=${POLL_MS:-50}
WORK=$(mktemp -d /tmp/walrs-fd.XXXXXX)
pids=(0 0 0 0)
cleanup() {
  for n in 1 2 3; do
    [ "${pids[$n]}" != 0 ] && kill -9 "${pids[$n]}" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/certs" "$WORK/cluster"
"$BIN" certs --out "$WORK/certs" >/dev/null
for n in 1 2 3; do
  "$BIN" certs --out "$WORK/certs" --node "$n" >/dev/null
  sed -e "s#certs/#$WORK/certs/#g" -e "s#data/cluster/#$WORK/data/#" \
    -e "s#^listen = \"127.0.0.1:707#listen = \"127.0.0.1:717#" \
    -e "s#addr = \"127.0.0.1:707#addr = \"127.0.0.1:717#" \
    -e "s#127.0.0.1:946#127.0.0.1:956#" "cluster/node-$n.toml" > "$WORK/cluster/node-$n.toml"
done
start() {
  RUST_LOG=warn "$BIN" serve --config "$WORK/cluster/node-$1.toml" >>"$WORK/node-$1.log" 2>&1 &
  pids[$1]=$!
}
state_of_3() {
  "$BIN" cluster status --json --addr 127.0.0.1:7171 --ca "$WORK/certs/ca.pem" \
    --cert "$WORK/certs/root.pem" --tls-key "$WORK/certs/root-key.pem" 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print([n["state"] for n in d["nodes"] if n["id"]==3][0])' 2>/dev/null || echo none
}
wait_state() {
  local want=$1 until=$(( $(date +%s) + 60 ))
  while [ "$(state_of_3)" != "$want" ]; do
    if [ "$(date +%s)" -ge "$until" ]; then echo "node 3 never $want" >&2; exit 1; fi
    sleep 0.2
  done
}
for n in 1 2 3; do start "$n"; done
wait_state alive
times=()
for t in $(seq 1 "$TRIALS"); do
  kill -9 "${pids[3]}"; wait "${pids[3]}" 2>/dev/null || true
  t0=$(date +%s%N)
  until [ "$(state_of_3)" = dead ]; do
    sleep "$(awk "BEGIN {print $POLL_MS / 1000}")"
    if [ $(( ($(date +%s%N) - t0) / 1000000 )) -gt 60000 ]; then echo "trial $t: never dead" >&2; exit 1; fi
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  times+=("$ms")
  echo "trial $t: declared dead after $ms ms"
  start 3
  wait_state alive
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "p50 %d ms, max %d ms over %d trials\n", a[int((NR+1)/2)], a[NR], NR}'
