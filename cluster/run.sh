#!/usr/bin/env bash
# Starts the three-node local cluster of cluster/node-{1,2,3}.toml and stops every node on
# Ctrl-C. A node that dies (kill -9 it to see a leader change) stays down while the others
# serve; start it again by hand with `walrs serve --config cluster/node-N.toml`. Run from the
# repository root (`make run-cluster` does).
# Makes the development CA and the clients' certificates (certs/) and each node's
# certificate (certs/node-N.pem) on first run; data lives in data/cluster/node-N.
set -euo pipefail
BIN=${WALRS:-./target/release/walrs}
mkdir -p certs data/cluster
if [ ! -f certs/ca.pem ]; then "$BIN" certs --out certs; fi
for n in 1 2 3; do
  if [ ! -f "certs/node-$n.pem" ]; then "$BIN" certs --out certs --node "$n"; fi
done
pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping the cluster (nodes ${pids[*]})"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
for n in 1 2 3; do
  # Each line prefixed with its node; $! is the server itself, not the prefixing filter.
  "$BIN" serve --config "cluster/node-$n.toml" > >(sed -u "s/^/[node-$n] /") 2>&1 &
  pids+=($!)
done
echo "three nodes serving on 127.0.0.1:7071, :7072 and :7073; Ctrl-C stops them all"
# Returns once every node has exited (Ctrl-C, or each killed); the trap stops the rest.
wait "${pids[@]}" || true
