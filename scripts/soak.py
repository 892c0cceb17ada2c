#!/usr/bin/env python3
"""Soak: many mixed requests through phantom-supervisor's HTTP API at a fixed
concurrency, then proof that nothing is left and that the supervisor did not grow.

    cargo build --release
    sudo ./scripts/soak.py --bin target/release --runs 10000 --concurrency 8

The mix, per request (one persistent sandbox per worker, made at the start):
  warm run      POST /api/v2/run, profile default (pooled by the supervisor)
  cold run      POST /api/v2/run, profile minimal (not pooled: a sandbox per run)
  run + files   POST /api/v2/run with a file in its workspace, read back by cat
  exec          POST /api/v2/sandboxes/NAME/exec
  file transfer PUT then GET /api/v2/sandboxes/NAME/files/content
  snapshot      POST /api/v2/sandboxes/NAME/snapshots, every 50th request of a worker
  restore       a sandbox created from that snapshot, read, deleted (every 200th)

Every 1,000 requests it samples the supervisor's RSS and open fds. At the end it
deletes the sandboxes, stops the supervisor and counts what is left of what this
soak made: processes, mounts, cgroups, run directories and state rows (each
compared with what existed before it started). A benchmark: it prints figures and
fails only when a request fails or something is left, never on time.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import http.client


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def processes():
    """Phantom's processes on the host, by pid and name (comm)."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if re.match(r"^phantom[-:]", comm):
            found.add(f"{pid} {comm}")
    return found


def cgroups():
    found = set()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        depth = root.count("/") - "/sys/fs/cgroup".count("/")
        if depth > 3:
            dirs[:] = []
            continue
        if os.path.basename(os.path.dirname(root)) == "phantom":
            found.add(root)
    return found


def run_dirs():
    found = set()
    for base in ["/dev/shm", os.environ.get("XDG_RUNTIME_DIR", ""), tempfile.gettempdir()]:
        if not base or not os.path.isdir(base):
            continue
        for d in os.listdir(base):
            if not d.startswith("phantom"):
                continue
            p = os.path.join(base, d)
            try:
                found.update(os.path.join(p, r) for r in os.listdir(p) if r.startswith("run-"))
            except OSError:
                pass
    return found


def mounts(marker):
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f if marker in line}


class Api:
    def __init__(self, port, key):
        self.port, self.key = port, key
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return c

    def call(self, method, path, body=None, raw=None):
        """(status, body bytes); 429 and 503 are retried after Retry-After."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        retries = 0
        while True:
            try:
                c = self.conn()
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                out = r.read()
            except (http.client.HTTPException, OSError):
                self.local.conn = None
                retries += 1
                if retries > 3:
                    raise
                continue
            if r.status in (429, 503) and retries < 50:
                retries += 1
                time.sleep(float(r.getheader("Retry-After") or "0.2"))
                continue
            return r.status, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release", help="directory of phantom and phantom-supervisor")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sample-every", type=int, default=1000)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    phantom = os.path.abspath(os.path.join(args.bin, "phantom"))
    supervisor_bin = os.path.abspath(os.path.join(args.bin, "phantom-supervisor"))

    before = {"processes": processes(), "cgroups": cgroups(), "run directories": run_dirs()}
    work = tempfile.mkdtemp(prefix="phantom-soak.")
    os.chmod(work, 0o755)
    env = dict(os.environ, PHANTOM_STATE_DIR=os.path.join(work, "state"))
    os.makedirs(env["PHANTOM_STATE_DIR"])
    key = json.loads(subprocess.check_output(
        [phantom, "keys", "add", "soak", "--json", "--rate", "1000000", "--burst", "100000",
         "--max-concurrent", str(args.concurrency * 3)], env=env))["key"]
    log = open(os.path.join(work, "supervisor.log"), "w+")
    sup = subprocess.Popen(
        [supervisor_bin, "--bind", "127.0.0.1:0", "--profiles", "default", "--zygote-pools", "4",
         "--socket", os.path.join(work, "engine.sock")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    port = None
    for _ in range(600):
        log.seek(0)
        m = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)", log.read())
        if m:
            port = int(m.group(1))
            break
        time.sleep(0.1)
    if port is None:
        log.seek(0)
        sys.exit("the supervisor did not start:\n" + log.read())
    api = Api(port, key)

    failures, counts, samples = [], {}, []
    lock = threading.Lock()
    done = [0]
    started = time.monotonic()

    def note(kind, status, want, body):
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            if status != want:
                failures.append(f"{kind}: {status} {body[:300]!r}")

    def worker(w):
        name = f"soak-{w}"
        st, body = api.call("POST", "/api/v2/sandboxes", {"name": name})
        note("create", st, 201, body)
        i = 0
        while True:
            with lock:
                if done[0] >= args.runs:
                    return
                done[0] += 1
                n = done[0]
                if n % args.sample_every == 0:
                    samples.append((n, rss_kb(sup.pid), fds(sup.pid), time.monotonic() - started))
            i += 1
            kind = ["warm", "cold", "files", "exec", "transfer"][i % 5]
            if kind == "warm":
                st, body = api.call("POST", "/api/v2/run", {"argv": ["true"]})
                note(kind, st, 200, body)
            elif kind == "cold":
                st, body = api.call("POST", "/api/v2/run", {"argv": ["true"], "profile": "minimal"})
                note(kind, st, 200, body)
            elif kind == "files":
                st, body = api.call("POST", "/api/v2/run", {
                    "argv": ["cat", "in.txt"], "files": [{"path": "in.txt", "content": f"run {n}"}]})
                ok = st == 200 and json.loads(body).get("stdout") == f"run {n}"
                note(kind, 200 if ok else st, 200, body)
            elif kind == "exec":
                st, body = api.call("POST", f"/api/v2/sandboxes/{name}/exec", {"argv": ["true"]})
                note(kind, st, 200, body)
            else:
                path = f"/api/v2/sandboxes/{name}/files/content?path=/workspace/t.txt"
                st, body = api.call("PUT", path, raw=f"transfer {n}".encode())
                note("put", st, 204, body)
                st, body = api.call("GET", path)
                note("get", 200 if body == f"transfer {n}".encode() else st, 200, body)
            if i % 50 == 0:
                st, body = api.call("POST", f"/api/v2/sandboxes/{name}/snapshots")
                note("snapshot", st, 201, body)
                if st == 201 and i % 200 == 0:
                    tag = json.loads(body)["tag"]
                    copy = f"{name}-restored"
                    st, body = api.call("POST", "/api/v2/sandboxes", {"name": copy, "from_snapshot": tag})
                    note("restore", st, 201, body)
                    st, body = api.call("DELETE", f"/api/v2/sandboxes/{copy}")
                    note("delete", st, 200, body)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    for w in range(args.concurrency):
        st, body = api.call("DELETE", f"/api/v2/sandboxes/soak-{w}")
        note("delete", st, 200, body)
    rows = subprocess.run([phantom, "list", "--json", "--every-owner"], env=env,
                          capture_output=True, text=True)
    state_rows = json.loads(rows.stdout) if rows.returncode == 0 else ["(phantom list failed)"]
    sup.send_signal(signal.SIGTERM)
    try:
        sup.wait(timeout=60)
    except subprocess.TimeoutExpired:
        sup.kill()
        failures.append("the supervisor did not stop within 60 s of SIGTERM")
    # A destroyed sandbox's keeper exits on its own, moments after the answer.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and processes() - before["processes"]:
        time.sleep(0.2)
    after = {"processes": processes(), "cgroups": cgroups(), "run directories": run_dirs()}
    left = {k: sorted(after[k] - before[k]) for k in after}
    left["mounts"] = sorted(mounts(work))
    left["state rows"] = state_rows

    total = sum(v for k, v in counts.items())
    print(f"soak: {args.runs} requests at concurrency {args.concurrency} in {elapsed:.1f} s "
          f"({args.runs / elapsed:.1f} requests/s); {total} API calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("supervisor   requests   RSS (KiB)   open fds   elapsed (s)")
    for n, rss, fd, t in samples:
        print(f"             {n:8d}   {rss:9d}   {fd:8d}   {t:11.1f}")
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        print(f"RSS {first[1]} -> {last[1]} KiB ({(last[1] - first[1]) / 1024:+.1f} MiB), "
              f"fds {first[2]} -> {last[2]} (requests {first[0]} -> {last[0]})")
    for what, items in left.items():
        print(f"left: {what}: {len(items)}" + ("" if not items else f" {items[:5]}"))
    for f in failures[:20]:
        print("failed:", f)
    if args.json:
        print(json.dumps({"requests": args.runs, "concurrency": args.concurrency, "seconds": elapsed,
                          "calls": counts, "samples": samples, "left": left, "failures": failures}))
    shutil.rmtree(work, ignore_errors=True)
    if failures or any(left.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
