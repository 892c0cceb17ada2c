#!/usr/bin/env python3
"""`ctr run --rm IMAGE ID true`, N times with phantom-oci and with Debian's runc
side by side (alternating, same containerd, same image), wall time per run; then
the same joining a running container's network namespace (`--with-ns`, the pod
pattern: phantom-oci forks a helper that joins it).

    scripts/bench-oci.sh [N]      # starts a private containerd (scripts/test-oci.sh)

Prints p50 and p95 of each and the ratio phantom-oci / runc (target: <= 1.0).
Never fails on time; fails only if a run fails.
"""
import os
import statistics
import subprocess
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
sock = os.environ["PHANTOM_OCI_CTR_SOCKET"]
image = os.environ["PHANTOM_OCI_IMAGE"]
runtimes = {"phantom-oci": os.environ["PHANTOM_OCI_BINARY"], "runc": os.environ.get("RUNC", "/usr/sbin/runc")}


def ctr(*args):
    return subprocess.run(["ctr", "-a", sock, "-n", "phantom-oci-test", *args], capture_output=True, text=True)


def run(name, binary, i, extra=()):
    cid = f"bench-{name}-{os.getpid()}-{i}"
    t0 = time.perf_counter()
    p = ctr("run", "--rm", "--runc-binary", binary, *extra, image, cid, "true")
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{name}: ctr run failed: {p.stderr.strip()}")
    return dt


def bench(title, extra):
    times = {name: [] for name in runtimes}
    for name, binary in runtimes.items():  # warm-up: page cache, shim binary
        run(name, binary, "warm", extra.get(name, ()))
    for i in range(n):
        for name, binary in (runtimes.items() if i % 2 == 0 else reversed(list(runtimes.items()))):
            times[name].append(run(name, binary, i, extra.get(name, ())))
    print(f"{title}, {n} runs each (alternating)")
    print(f"{'runtime':<12} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for name in runtimes:
        xs = times[name]
        print(f"{name:<12} {pct(xs, .5) * 1000:8.1f} {pct(xs, .95) * 1000:8.1f} {statistics.mean(xs) * 1000:8.1f}")
    r50 = pct(times["phantom-oci"], .5) / pct(times["runc"], .5)
    r95 = pct(times["phantom-oci"], .95) / pct(times["runc"], .95)
    print(f"ratio phantom-oci/runc: p50 {r50:.2f}x, p95 {r95:.2f}x (target <= 1.0x)")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


bench(f"ctr run --rm {image} true", {})

# One long-running container per runtime, whose network namespace the runs join.
sleepers = {}
try:
    for name, binary in runtimes.items():
        cid = f"bench-sleeper-{name}-{os.getpid()}"
        p = ctr("run", "-d", "--runc-binary", binary, image, cid, "sleep", "600")
        if p.returncode != 0:
            sys.exit(f"{name}: ctr run -d failed: {p.stderr.strip()}")
        sleepers[name] = (cid, None)
        pid = next(line.split()[1] for line in ctr("task", "ls").stdout.splitlines() if line.split()[0] == cid)
        sleepers[name] = (cid, pid)
    print()
    bench(f"ctr run --rm --with-ns network:/proc/PID/ns/net {image} true (joining a running container's netns)",
          {name: ("--with-ns", f"network:/proc/{pid}/ns/net") for name, (_, pid) in sleepers.items()})
finally:
    for cid, _ in sleepers.values():
        ctr("task", "kill", "-s", "KILL", cid)
        for _ in range(50):
            if ctr("task", "delete", cid).returncode == 0 or cid not in ctr("task", "ls").stdout:
                break
            time.sleep(0.1)
        ctr("container", "delete", cid)
