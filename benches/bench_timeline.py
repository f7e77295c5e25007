#!/usr/bin/env python3
"""Per-interval throughput of a `walrs bench` run, from its own progress line.

`walrs bench` draws a live progress line (every 500 ms: the append rate and p99 over the
last tick, and the records acknowledged so far) only when its standard error is a terminal.
`run` gives it a pseudo-terminal (300 columns wide, so that the line is not cut), stamps
every line it draws with the wall-clock time, and writes them as CSV; its standard output
(the report) goes where this script's goes. `summary` cuts that timeline at a move's start
and end (wall-clock seconds, as `date +%s.%N` prints them) into before / during / after,
one-second throughput from the acknowledged counts, and prints one JSON object.

  bench_timeline.py run --csv OUT.csv -- walrs bench ... (without --quiet)
  bench_timeline.py summary --csv OUT.csv --move-start T0 --move-end T1

Only standard library; Linux (pty, TIOCSWINSZ).
"""
import argparse
import csv
import fcntl
import json
import os
import pty
import re
import statistics
import struct
import subprocess
import sys
import termios
import time

# "... measuring:     131072 records/s, p99 12.345 ms, 1310720 records acked"
LINE = re.compile(
    r"(warm-up|measuring):\s+(\d+) records/s, p99 (-|[0-9.]+ ms), (\d+) records acked"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(args):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300, 0, 0))
    proc = subprocess.Popen(args.command, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    other = open(args.csv + ".stderr", "w")  # what is not a progress line (errors, warnings)
    with open(args.csv, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t", "phase", "rate", "p99_ms", "acked"])
        buf, last = "", None
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            now = time.time()
            buf += chunk.decode("utf-8", "replace")
            parts = re.split(r"[\r\n]", buf)
            buf = parts.pop()
            for part in parts:
                text = ANSI.sub("", part).strip()
                m = LINE.search(text)
                if m:
                    sample = (m.group(1), m.group(2), m.group(3), m.group(4))
                    if sample != last:  # a redraw of the same tick is not a new sample
                        p99 = "" if m.group(3) == "-" else m.group(3).split()[0]
                        out.writerow([f"{now:.3f}", m.group(1), m.group(2), p99, m.group(4)])
                        f.flush()
                        last = sample
                elif text:
                    other.write(text + "\n")
    other.close()
    return proc.wait()


def summary(args):
    rows = []
    with open(args.csv) as f:
        for r in csv.DictReader(f):
            rows.append((float(r["t"]), r["phase"], int(r["acked"]),
                         float(r["p99_ms"]) if r["p99_ms"] else None))
    t0, t1 = args.move_start, args.move_end
    # One-second throughput: acknowledged records between samples about 1 s apart (two ticks
    # of 500 ms), stamped at the interval's end; only the measuring phase.
    meas = [r for r in rows if r[1] == "measuring"]
    secs = []
    i = 0
    while i + 1 < len(meas):
        j = i + 1
        while j < len(meas) and meas[j][0] - meas[i][0] < 0.95:
            j += 1
        if j == len(meas):
            break
        dt = meas[j][0] - meas[i][0]
        secs.append((meas[i][0], meas[j][0], (meas[j][2] - meas[i][2]) / dt))
        i = j

    def part(lo, hi):
        # Intervals wholly inside [lo, hi) (before/after), or overlapping it (during).
        return [s for s in secs if lo <= s[0] and s[1] <= hi]

    before = part(float("-inf"), t0)
    during = [s for s in secs if s[1] > t0 and s[0] < t1]
    after = part(t1, float("inf"))
    p99s = lambda lo, hi: [r[3] for r in meas if r[3] is not None and lo < r[0] <= hi]

    def stats(xs, lo, hi):
        rates = [s[2] for s in xs]
        p = p99s(lo, hi)
        return {
            "seconds": len(rates),
            "median_records_per_s": statistics.median(rates) if rates else None,
            "min_records_per_s": min(rates) if rates else None,
            "max_records_per_s": max(rates) if rates else None,
            "worst_window_p99_ms": max(p) if p else None,
            "median_window_p99_ms": statistics.median(p) if p else None,
        }

    first = meas[0][0] if meas else t0
    result = {
        "move_s": t1 - t0,
        "move_starts_at_s": t0 - first,
        "before": stats(before, float("-inf"), t0),
        "during": stats(during, t0, t1),
        "after": stats(after, t1, float("inf")),
        "per_second": [[round(a - first, 2), round(b - first, 2), round(r)] for a, b, r in secs],
    }
    print(json.dumps(result))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--csv", required=True)
    r.add_argument("command", nargs=argparse.REMAINDER)
    s = sub.add_parser("summary")
    s.add_argument("--csv", required=True)
    s.add_argument("--move-start", type=float, required=True)
    s.add_argument("--move-end", type=float, required=True)
    args = p.parse_args()
    if args.what == "run":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        sys.exit(run(args))
    summary(args)


if __name__ == "__main__":
    main()
