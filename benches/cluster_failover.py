#!/usr/bin/env python3
"""Failover time of a three-node wal.rs cluster, measured from outside (issue 10).

Used by benches/cluster-bench.sh, which starts the nodes, writes each one's pid to
RUN/node-N.pid and its config to RUN/node-N.toml, and makes the Python stubs of
proto/walrs/v1/log.proto. This script owns the trials:

  - one appender thread sends one record at a time (unary Append, depth 1) to partition 0 of
    the topic, at the node it believes leads it: it follows the `walrs-leader: <id>=<host:port>`
    hint of a refusal, and on UNAVAILABLE without a hint (a dead node, an election under way)
    tries the next node after a 5 ms pause;
  - per trial: the leader of partition 0 (DescribeTopic `leader`) is killed with SIGKILL; t0 is
    taken just before the kill, t1 when the first append is acknowledged by another node (only
    the new leader can acknowledge); failover = t1 - t0. The killed node is started again and
    the next trial waits until its own DescribeTopic high_watermark has reached the last
    acknowledged offset + 1 (it has caught up).

It never restarts a node it did not kill, and writes the restarted node's new pid to its pid
file so that the calling script stops it at the end. Output: one JSON object (every trial's
failover and catch-up time, the appender's retries, the acknowledged count) on stdout and in
--json.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import grpc


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="directory with node-N.toml and node-N.pid")
    p.add_argument("--stubs", required=True, help="directory holding walrs/v1/log_pb2*.py")
    p.add_argument("--bin", required=True, help="the walrs binary (to restart a killed node)")
    p.add_argument("--nodes", required=True, help="id=host:port,... of every node")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--topic", default="failover")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--json", help="write the results here too")
    p.add_argument(
        "--verbose", action="store_true", help="log each refusal during a failover (ms since the kill)"
    )
    return p.parse_args()


ARGS = parse_args()
sys.path.insert(0, ARGS.stubs)
from walrs.v1 import log_pb2, log_pb2_grpc  # noqa: E402  (generated at run time)

NODES = {}
for item in ARGS.nodes.split(","):
    node_id, addr = item.split("=")
    NODES[int(node_id)] = addr
ORDER = sorted(NODES)
CREDS = grpc.ssl_channel_credentials(
    root_certificates=open(ARGS.ca, "rb").read(),
    private_key=open(ARGS.key, "rb").read(),
    certificate_chain=open(ARGS.cert, "rb").read(),
)
# Reconnect quickly to a node that comes back (gRPC's default backoff starts at 1 s).
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", "localhost"),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def log(*what):
    print(time.strftime("%H:%M:%S"), *what, file=sys.stderr, flush=True)


class Stubs:
    """One channel per node; a restarted node gets a fresh one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stubs = {n: self._make(n) for n in ORDER}

    def _make(self, node):
        channel = grpc.secure_channel(NODES[node], CREDS, options=CHANNEL_OPTIONS)
        return channel, log_pb2_grpc.LogStub(channel)

    def get(self, node):
        with self.lock:
            return self.stubs[node][1]

    def renew(self, node):
        with self.lock:
            old = self.stubs[node][0]
            self.stubs[node] = self._make(node)
        old.close()


STUBS = Stubs()


def hint_of(error):
    """The leader's node id from a refusal's `walrs-leader` metadata, or None."""
    for md in (error.trailing_metadata() or ()), (error.initial_metadata() or ()):
        for key, value in md:
            if key == "walrs-leader":
                try:
                    return int(value.strip().split("=", 1)[0])
                except ValueError:
                    return None
    return None


class Appender(threading.Thread):
    """Appends one record at a time to partition 0, following the leader."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.cond = threading.Condition()
        # (monotonic ack time, node that acknowledged, base_offset) of the latest ack
        self.last_ack = None
        self.acks = 0
        self.retries = 0
        self.errors = {}
        self.target = ORDER[0]
        # The kill's time while a trial is under way (for --verbose).
        self.t0 = None

    def run(self):
        seq = 0
        while not self.stop.is_set():
            node = self.target
            value = b"failover-%012d" % seq
            request = log_pb2.AppendRequest(
                topic=ARGS.topic, partition=0, records=[log_pb2.Record(value=value)]
            )
            try:
                response = STUBS.get(node).Append(request, timeout=5.0)
            except grpc.RpcError as error:
                self.retries += 1
                code = error.code().name
                self.errors[code] = self.errors.get(code, 0) + 1
                hint = hint_of(error)
                if ARGS.verbose and self.t0 is not None:
                    at_ms = (time.monotonic() - self.t0) * 1000
                    log(f"  +{at_ms:.0f} ms node {node}: {code} hint={hint} {error.details()[:120]!r}")
                if hint is not None and hint in NODES and hint != node:
                    self.target = hint
                else:
                    self.target = ORDER[(ORDER.index(node) + 1) % len(ORDER)]
                    time.sleep(0.005)
                continue
            seq += 1
            with self.cond:
                self.last_ack = (time.monotonic(), node, response.base_offset)
                self.acks += 1
                self.cond.notify_all()

    def wait_ack(self, predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                if self.last_ack is not None and predicate(self.last_ack):
                    return self.last_ack
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def describe(node, timeout_s=2.0):
    request = log_pb2.DescribeTopicRequest(name=ARGS.topic)
    return STUBS.get(node).DescribeTopic(request, timeout=timeout_s).partitions[0]


def leader_of_partition0(alive):
    """The leader as a live node reports it, once one is known."""
    for _ in range(200):
        for node in alive:
            try:
                leader = describe(node).leader
            except grpc.RpcError:
                continue
            if leader in alive:
                return leader
        time.sleep(0.05)
    raise SystemExit("no leader of partition 0 known after 10 s")


def pid_of(node):
    with open(os.path.join(ARGS.run, f"node-{node}.pid")) as f:
        return int(f.read())


def restart(node):
    config = os.path.join(ARGS.run, f"node-{node}.toml")
    logfile = open(os.path.join(ARGS.run, f"node-{node}.log"), "ab")
    process = subprocess.Popen(
        [ARGS.bin, "serve", "--config", config],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    with open(os.path.join(ARGS.run, f"node-{node}.pid"), "w") as f:
        f.write(str(process.pid))
    return process


def create_topic():
    request = log_pb2.CreateTopicRequest(name=ARGS.topic, partitions=1, replication_factor=3)
    for _ in range(100):
        try:
            STUBS.get(ORDER[0]).CreateTopic(request, timeout=10.0)
            return
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            log("create topic:", error.code().name, error.details())
            time.sleep(0.2)
    raise SystemExit("could not create the topic")


def main():
    create_topic()
    appender = Appender()
    appender.start()
    if appender.wait_ack(lambda a: True, 30) is None:
        raise SystemExit("no append acknowledged within 30 s of the start")
    children = []
    trials = []
    for trial in range(1, ARGS.trials + 1):
        # Steady state first: acks flowing for a second.
        time.sleep(1.0)
        # The node that acknowledged last leads (only a leader acknowledges); DescribeTopic
        # is asked too, and a disagreement is reported.
        with appender.cond:
            leader = appender.last_ack[1]
        described = leader_of_partition0(ORDER)
        if described != leader:
            log(f"trial {trial}: DescribeTopic names node {described}, the last ack came from {leader}")
        pid = pid_of(leader)
        t0 = time.monotonic()
        appender.t0 = t0
        os.kill(pid, signal.SIGKILL)
        ack = appender.wait_ack(lambda a: a[0] > t0 and a[1] != leader, 60)
        if ack is None:
            log(f"trial {trial}: no ack from another node within 60 s of killing node {leader}")
            trials.append({"trial": trial, "killed": leader, "failover_ms": None})
            break
        appender.t0 = None
        failover_ms = (ack[0] - t0) * 1000
        new_leader = ack[1]
        # Reap our own children (nodes restarted in earlier trials) that just died.
        for child in children:
            child.poll()
        restarted_at = time.monotonic()
        children.append(restart(leader))
        STUBS.renew(leader)
        with appender.cond:
            target_hw = appender.last_ack[2] + 1
        caught_up_ms = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if describe(leader, 1.0).high_watermark >= target_hw:
                    caught_up_ms = (time.monotonic() - restarted_at) * 1000
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        trials.append(
            {
                "trial": trial,
                "killed": leader,
                "new_leader": new_leader,
                "failover_ms": round(failover_ms, 1),
                "catch_up_ms": None if caught_up_ms is None else round(caught_up_ms, 1),
            }
        )
        log(
            f"trial {trial}: killed node {leader} (pid {pid}); node {new_leader} acked after "
            f"{failover_ms:.0f} ms; restarted node caught up to {target_hw} in "
            f"{caught_up_ms if caught_up_ms is None else round(caught_up_ms)} ms"
        )
        if caught_up_ms is None:
            log(f"trial {trial}: node {leader} did not catch up within 120 s; stopping")
            break
    appender.stop.set()
    appender.join(10)
    values = [t["failover_ms"] for t in trials if t["failover_ms"] is not None]
    result = {
        "trials": trials,
        "failover_ms_p50": statistics.median(values) if values else None,
        "failover_ms_max": max(values) if values else None,
        "acks": appender.acks,
        "append_retries": appender.retries,
        "append_errors": appender.errors,
        "last_offset": appender.last_ack[2] if appender.last_ack else None,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
