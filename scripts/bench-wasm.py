#!/usr/bin/env python3
"""Start time of mode wasm against a native sandbox, through the real `phantom` binary.

    scripts/bench-wasm.py [--phantom PATH] [--iterations N] [--python]

Times, end to end (process start to exit of `phantom run`, cold: no supervisor):
  * native:  phantom run -- true
  * wasm:    phantom run --mode wasm -- hello.wat   (a module served from the compile
             cache: one untimed run first compiles it)
  * with --python (a WASI CPython installed, see docs/ARCHITECTURE.md "Mode wasm"):
             phantom run --mode wasm -- python3 -c pass   against
             phantom run -- python3 -c pass
and prints p50/p95/p99 in milliseconds. Uses a private state directory (the compile
cache; --state-dir keeps one, e.g. with CPython compiled already) and runtime
directory, removed at the end.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HELLO = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "hi\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def percentile(samples, p):
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(argv, env, n):
    # One untimed run: compiles a module, warms the page cache.
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom", default=shutil.which("phantom") or "target/debug/phantom")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--python", action="store_true")
    parser.add_argument("--state-dir", help="PHANTOM_STATE_DIR to use (keeps its compile cache; default: a private one)")
    args = parser.parse_args()

    place = tempfile.mkdtemp(prefix="phantom-bench-wasm-")
    try:
        runtime = os.path.join(place, "runtime")
        os.mkdir(runtime, 0o700)
        state = args.state_dir or os.path.join(place, "state")
        env = dict(os.environ, PHANTOM_STATE_DIR=state, XDG_RUNTIME_DIR=runtime)
        module = os.path.join(place, "hello.wat")
        with open(module, "w") as f:
            f.write(HELLO)
        cases = [
            ("native: phantom run -- true", [args.phantom, "run", "--", "true"]),
            ("wasm (cached module)", [args.phantom, "run", "--mode", "wasm", "--", module]),
        ]
        if args.python:
            cases += [
                ("native: python3 -c pass", [args.phantom, "run", "--", "python3", "-c", "pass"]),
                ("wasm: python3 -c pass (cached)",
                 [args.phantom, "run", "--mode", "wasm", "--timeout", "10m", "--", "python3", "-c", "pass"]),
            ]
        print(f"{'case':34} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8}  (ms)")
        for name, argv in cases:
            samples = measure(argv, env, args.iterations)
            print(f"{name:34} {len(samples):4} {percentile(samples, 50):8.1f} "
                  f"{percentile(samples, 95):8.1f} {percentile(samples, 99):8.1f}")
            sys.stdout.flush()
    finally:
        shutil.rmtree(place, ignore_errors=True)


if __name__ == "__main__":
    main()
