#!/usr/bin/env python3
"""Round trip of `run_code` python `print(1)` through phantom-mcp over stdio, warm and
cold: the time from writing the tools/call request to reading its response (JSON-RPC
framing included, no SDK in between). Prints figures; never fails on time.

    cargo build --release
    ./scripts/bench-mcp.py [--bin target/release/phantom-mcp] [--iterations 200] [--pause-ms 0]

warm: --mode zygote --profiles python-dev (pre-started interpreters; the pool refills
between calls, so calls faster than the refill may start cold — the `start` counts say
how each call was served). cold: --mode cold (a fresh sandbox from the server's engine per
call).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def percentile(sorted_v, p):
    rank = round(p / 100 * (len(sorted_v) - 1))
    return sorted_v[min(rank, len(sorted_v) - 1)]


def bench(binary, mode_args, iterations, pause_ms, warmup=5):
    proc = subprocess.Popen([binary, "--transport", "stdio", *mode_args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    next_id = [0]

    def request(method, params):
        next_id[0] += 1
        msg = {"jsonrpc": "2.0", "id": next_id[0], "method": method, "params": params}
        t0 = time.perf_counter()
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        while True:
            reply = json.loads(proc.stdout.readline())
            if reply.get("id") == next_id[0]:
                return (time.perf_counter() - t0) * 1000, reply

    request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "bench-mcp", "version": "1"}})
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
    proc.stdin.flush()
    call = {"name": "run_code", "arguments": {"language": "python", "code": "print(1)"}}
    times, starts = [], {}
    for i in range(warmup + iterations):
        ms, reply = request("tools/call", call)
        sc = reply["result"].get("structuredContent") or {}
        if sc.get("stdout") != "1\n":
            sys.exit(f"unexpected result: {reply}")
        if i >= warmup:
            times.append(ms)
            starts[sc["start"]] = starts.get(sc["start"], 0) + 1
        if pause_ms:
            time.sleep(pause_ms / 1000)
    proc.stdin.close()
    proc.wait(timeout=30)
    times.sort()
    return {"p50_ms": round(percentile(times, 50), 2), "p95_ms": round(percentile(times, 95), 2),
            "mean_ms": round(statistics.mean(times), 2), "min_ms": round(times[0], 2),
            "iterations": iterations, "starts": starts}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/phantom-mcp")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--pause-ms", type=float, default=0)
    ap.add_argument("--pool-size", type=int, default=4)
    args = ap.parse_args()
    rows = {
        "warm": bench(args.bin, ["--mode", "zygote", "--profiles", "python-dev", "--pool-size", str(args.pool_size)],
                      args.iterations, args.pause_ms),
        "cold": bench(args.bin, ["--mode", "cold"], args.iterations, args.pause_ms),
    }
    print(f"run_code python print(1) over stdio, {args.iterations} calls each (pause {args.pause_ms} ms)")
    print(f"{'':6} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'min ms':>8}  served")
    for name, r in rows.items():
        served = ", ".join(f"{k} {v}" for k, v in sorted(r["starts"].items()))
        print(f"{name:6} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['mean_ms']:>8} {r['min_ms']:>8}  {served}")
    print(json.dumps(rows))


main()
