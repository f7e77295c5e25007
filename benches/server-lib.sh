# Shell helpers shared by the benchmark scripts in this directory (sourced, not run).
# A script that sources this sets SERVER to the PID of the server it starts; the EXIT trap
# stops that server however the script ends.

SERVER=

cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
}
trap cleanup EXIT

# Waits until `$1` (a log file) has a line matching `$2`, at most 60 s.
wait_for() {
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "timed out waiting for '$2' in $1" >&2
  return 1
}
