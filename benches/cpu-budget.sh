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
# The cgroup is made at the top of the cgroup v2 hierarchy when its children can have the
# cpu controller (/sys/fs/cgroup/cgroup.subtree_control), or else of v1's
# /sys/fs/cgroup/cpu. So the command leaves the cgroup it was in, and that cgroup's limits.
# Named walrs-budget-PID, it is left behind when the command exits (an empty cgroup costs
# nothing; `benches/cpu-budget.sh clean` removes the empty ones). Needs root.
set -euo pipefail
PERIOD_US=${PERIOD_US:-10000}

fail() {
    echo "cpu-budget: $*" >&2
    exit 2
}

roots() {
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        if ! grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null \
            && ! echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
            fail "the cgroup v2 root does not give its children the cpu controller, and enabling it failed (cgroup.subtree_control)"
        fi
        echo /sys/fs/cgroup
    elif [ -d /sys/fs/cgroup/cpu ]; then
        echo /sys/fs/cgroup/cpu
    else
        fail "no cgroup cpu controller under /sys/fs/cgroup"
    fi
}

if [ "${1:-}" = clean ]; then
    for dir in "$(roots)"/walrs-budget-*; do
        [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true
    done
    exit 0
fi
if [ $# -lt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    fail "usage: $0 MILLICORES COMMAND [ARG...]   (1000 = one core)"
fi
[[ $PERIOD_US =~ ^[0-9]+$ ]] && [ $((10#$PERIOD_US)) -ge 1000 ] && [ $((10#$PERIOD_US)) -le 1000000 ] \
    || fail "PERIOD_US must be between 1000 and 1000000 (µs); it is $PERIOD_US"
PERIOD_US=$((10#$PERIOD_US))
MILLICORES=$((10#$1))
shift
QUOTA_US=$((PERIOD_US * MILLICORES / 1000))
# The kernel refuses a quota under 1 ms.
[ "$QUOTA_US" -ge 1000 ] \
    || fail "$MILLICORES millicores of a ${PERIOD_US} µs period is under the kernel's 1 ms minimum quota: at least $((1000000 / PERIOD_US)) millicores"
ROOT=$(roots)
GROUP=$ROOT/walrs-budget-$$
mkdir -p "$GROUP"
trap 'rmdir "$GROUP" 2>/dev/null' ERR
if [ "$ROOT" = /sys/fs/cgroup ]; then
    echo "$QUOTA_US $PERIOD_US" >"$GROUP/cpu.max"
else
    echo "$PERIOD_US" >"$GROUP/cpu.cfs_period_us"
    echo "$QUOTA_US" >"$GROUP/cpu.cfs_quota_us"
fi
echo $$ >"$GROUP/cgroup.procs"
trap - ERR
exec "$@"
