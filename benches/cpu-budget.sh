#!/usr/bin/env bash
# Runs a command with a CPU budget of its own: at most MILLICORES thousandths of one core
# (500 = half a core), enforced by the kernel's CFS bandwidth control over every thread the
# command has (io_uring's workers included: they are created in their process's cgroup).
#
# Usage: benches/cpu-budget.sh MILLICORES COMMAND [ARG...]
#
# Used as `SERVER_PREFIX="benches/cpu-budget.sh 500" benches/cluster-bench.sh workloads`
# to give every node the same budget, as if each ran on a machine of its own that size
# (BENCHMARKS.md, issue 10, "Each node on its own CPU budget"). The budget is refilled
# every 10 ms (`PERIOD_US`), so a node that used it up waits at most that long.
#
# The cgroup is made under the cgroup v2 hierarchy when it has the cpu controller
# (/sys/fs/cgroup/cgroup.controllers), or else v1's /sys/fs/cgroup/cpu; named
# walrs-budget-PID, left behind when the command exits (an empty cgroup costs nothing;
# `benches/cpu-budget.sh clean` removes the empty ones). Needs root.
set -euo pipefail
PERIOD_US=${PERIOD_US:-10000}

roots() {
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        echo /sys/fs/cgroup
    elif [ -d /sys/fs/cgroup/cpu ]; then
        echo /sys/fs/cgroup/cpu
    else
        echo "cpu-budget: no cgroup cpu controller under /sys/fs/cgroup" >&2
        exit 2
    fi
}

if [ "${1:-}" = clean ]; then
    for dir in "$(roots)"/walrs-budget-*; do
        [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true
    done
    exit 0
fi
if [ $# -lt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 10 ]; then
    echo "usage: $0 MILLICORES COMMAND [ARG...]   (MILLICORES >= 10; 1000 = one core)" >&2
    exit 2
fi
MILLICORES=$1
shift
ROOT=$(roots)
GROUP=$ROOT/walrs-budget-$$
mkdir -p "$GROUP"
QUOTA_US=$((PERIOD_US * MILLICORES / 1000))
if [ "$ROOT" = /sys/fs/cgroup ]; then
    echo "$QUOTA_US $PERIOD_US" >"$GROUP/cpu.max"
else
    echo "$PERIOD_US" >"$GROUP/cpu.cfs_period_us"
    echo "$QUOTA_US" >"$GROUP/cpu.cfs_quota_us"
fi
echo $$ >"$GROUP/cgroup.procs"
exec "$@"
