#!/usr/bin/env python3
"""E2B surface benchmarks with E2B's unchanged Python SDKs (issue 14's targets).

    python3 -m venv /tmp/e2bvenv && /tmp/e2bvenv/bin/pip install e2b e2b-code-interpreter
    cargo build --release
    /tmp/e2bvenv/bin/python scripts/bench-e2b.py [--bin target/release] [--iterations 100] [--sandboxes 200]

Prints, never fails on time:
  1. time to first command: Sandbox.create() then commands.run("true") (p50/p95/p99),
     interleaved with `phantom run --cold -- true` and, when installed, `bwrap ... true`
     (peers run side by side in this process; hosted E2B and Daytona are not reachable
     from here: their published medians are quoted, not measured);
  2. run_code("x + 1") in an existing context (p50/p95/p99);
  3. N live sandboxes each with an idle Python context: the PSS of every process the
     supervisor has then (sandbox inits, keepers, interpreters) minus before, per sandbox.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def row(name, samples):
    print(f"{name:<44} p50 {pct(samples, 50):8.2f} ms  p95 {pct(samples, 95):8.2f} ms  p99 {pct(samples, 99):8.2f} ms  (n={len(samples)})")


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def sandbox_pids(server_pid):
    """The supervisor and its descendants, every process in a phantom cgroup (the
    sandboxes' processes, interpreters included) and the sandboxes' keepers."""
    pids = set(descendants(server_pid))
    for root, _dirs, files in os.walk("/sys/fs/cgroup"):
        if "/phantom" in root and "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip().startswith("phantom:keeper"):
                        pids.add(int(entry))
            except OSError:
                pass
    return sorted(pids)


def pss_kb(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                m = re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M)
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--sandboxes", type=int, default=200)
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="phantom-bench-e2b.")
    os.chmod(work, 0o755)
    env = dict(os.environ, PHANTOM_STATE_DIR=os.path.join(work, "state"))
    os.makedirs(env["PHANTOM_STATE_DIR"])
    key = json.loads(subprocess.run(
        [f"{bin_dir}/phantom", "keys", "add", "bench", "--e2b", "--json", "--max-concurrent", "100000",
         "--rate", "1000000", "--burst", "100000"],
        env=env, check=True, capture_output=True, text=True).stdout)["key"]
    log = open(os.path.join(work, "supervisor.log"), "w+")
    server = subprocess.Popen(
        [f"{bin_dir}/phantom-supervisor", "--e2b-bind", "127.0.0.1:0", "--profiles", "default",
         "--zygote-pools", "1", "--max-sandboxes", str(args.sandboxes + 64),
         "--socket", os.path.join(work, "engine.sock")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = None
        for _ in range(600):
            log.seek(0)
            m = re.search(r"E2B API on (http://\S+)", log.read())
            if m:
                url = m.group(1)
                break
            time.sleep(0.05)
        if not url:
            sys.exit("the supervisor did not start: " + log.read())
        os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
        from e2b_code_interpreter import Sandbox

        print(f"machine: {os.cpu_count()} CPUs; {args.iterations} iterations per row, interleaved")
        bwrap = shutil.which("bwrap")
        peers = {"phantom run --cold -- true": [f"{bin_dir}/phantom", "run", "--cold", "--", "true"]}
        if bwrap:
            peers["bwrap --unshare-all ... true"] = [
                bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64",
                "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]
        first, peer_samples = [], {k: [] for k in peers}
        Sandbox.create().kill()  # warm-up
        for _ in range(args.iterations):
            t = time.perf_counter()
            sb = Sandbox.create()
            sb.commands.run("true")
            first.append((time.perf_counter() - t) * 1000)
            sb.kill()
            for name, argv in peers.items():
                t = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                peer_samples[name].append((time.perf_counter() - t) * 1000)
        print("\n1. time to first command")
        row("E2B SDK: Sandbox.create() + commands.run(true)", first)
        for name, samples in peer_samples.items():
            row(name, samples)
            print(f"{'':<44} ratio p50 {pct(first, 50) / pct(samples, 50):.2f}x")
        print("   (published, not measured here: hosted E2B ~440 ms median, Daytona ~110 ms)")

        sb = Sandbox.create()
        sb.run_code("x = 1")
        for _ in range(5):
            sb.run_code("x + 1")
        code = []
        for _ in range(args.iterations):
            t = time.perf_counter()
            assert sb.run_code("x + 1").text == "2"
            code.append((time.perf_counter() - t) * 1000)
        sb.kill()
        print("\n2. run_code in an existing context")
        row('run_code("x + 1")', code)

        pids_before = sandbox_pids(server.pid)
        before = pss_kb(pids_before)
        live = []
        t = time.perf_counter()
        for i in range(args.sandboxes):
            s = Sandbox.create(timeout=3600)
            s.run_code("x = 1")
            live.append(s)
            if (i + 1) % 50 == 0:
                print(f"   {i + 1} sandboxes with a context ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        time.sleep(2)
        pids = sandbox_pids(server.pid)
        after = pss_kb(pids)
        per = (after - before) / args.sandboxes / 1024
        print(f"\n3. {args.sandboxes} live sandboxes, each with an idle Python context")
        print(f"   processes: {len(pids_before)} before, {len(pids)} after; PSS {before / 1024:.1f} MiB before, "
              f"{after / 1024:.1f} MiB after: {per:.2f} MiB per sandbox")
        for s in live:
            s.kill()
    finally:
        server.terminate()
        server.wait(timeout=60)
        subprocess.run([f"{bin_dir}/phantom", "destroy", "--all", "--every-owner"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


main()
