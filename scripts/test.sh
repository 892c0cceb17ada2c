#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds once, runs
# the unit and integration tests as root (where CI runs) and again as an unprivileged
# user, then asserts that nothing was left behind on the host.
#
#   ./scripts/test.sh            # everything
#   SKIP_LINT=1 ./scripts/test.sh  # skip fmt/clippy (faster local loop)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
step() { printf '\n== [%ss] %s\n' "$SECONDS" "$*"; }

# What a run of phantom can leave on the host, one line per thing: mounts, sandbox
# cgroups, processes (by pid and name), run directories, MCP scratch directories.
leftovers() {
  grep phantom /proc/mounts | sed 's/^/mount: /' || true
  find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -path '*/phantom/*' -type d 2>/dev/null | sed 's/^/cgroup: /' || true
  # By process name (comm), not command line: `cargo build -p phantom-probe` of a
  # concurrent build is no leak.
  ps -eo pid=,comm= | awk '$2 ~ /^(phantom-(init|probe|keeper)|phantom:(init|payload|exec|keeper|proxy|engine))$/ {print "process: " $1 " " $2}' || true
  # MCP servers and the supervisors they start, from this tree or the staged copy.
  pgrep -a -f "^($root/target/debug|/tmp/phantom-suite\.[^/]*)/phantom-(mcp|supervisor)" | sed 's/^/process: /' || true
  find /dev/shm "${TMPDIR:-/tmp}" ${XDG_RUNTIME_DIR:+"$XDG_RUNTIME_DIR"} -maxdepth 2 -path '*phantom*/run-*' 2>/dev/null | sed 's/^/run directory: /' || true
  find /tmp "${TMPDIR:-/tmp}" -maxdepth 2 -name 'phantom-mcp.*' 2>/dev/null | sed 's/^/MCP scratch directory: /' || true
  # The OCI tests' bundles, state roots and logs (a unit test once left its bundles).
  find /tmp "${TMPDIR:-/tmp}" -maxdepth 1 -name 'phantom-oci-*' 2>/dev/null | sed 's/^/OCI test directory: /' || true
}
# Temporary files and directories of the suite, removed however it ends.
scratch_paths=()
trap 'rm -rf "${scratch_paths[@]}"' EXIT
baseline=$(mktemp /tmp/phantom-suite-baseline.XXXXXX)
scratch_paths+=("$baseline")
leftovers > "$baseline"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! /usr/bin/python3 -c 'import numpy, pandas, matplotlib' 2>/dev/null; then
  step "python3-pandas and python3-matplotlib (python-data's preloads, tests/zygote.rs)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pandas python3-matplotlib >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pandas python3-matplotlib >/dev/null; }
fi

# Each built-in profile runs a hello world in its language (tests/profiles.rs): the
# toolchains Debian has, installed when missing.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  want=()
  command -v javac >/dev/null || want+=(default-jdk-headless)
  command -v go >/dev/null || want+=(golang-go)
  command -v node >/dev/null || want+=(nodejs)
  if [ ${#want[@]} -gt 0 ]; then
    step "toolchains for the profile tests: ${want[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null; }
  fi
fi

# Tests that skip say why here too (cargo shows them as `ok`); listed at the end.
skip_log=$(mktemp /tmp/phantom-suite-skips.XXXXXX)
chmod 666 "$skip_log"
scratch_paths+=("$skip_log")
export PHANTOM_SKIP_LOG="$skip_log"

step "toolchain"
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }
cargo --version

if [ "$(id -u)" = 0 ]; then
  # The unprivileged half of the suite runs as this user.
  TEST_USER=${PHANTOM_TEST_USER:-phantom-test}
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    step "creating unprivileged test user $TEST_USER"
    useradd --create-home --shell /bin/sh "$TEST_USER"
  fi
  # Root in CI has every kernel feature the core tests need: none may skip there.
  export PHANTOM_REQUIRE_ISOLATION=1
fi

if [ -z "${SKIP_LINT:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
fi

# Clippy lints the workspace's crates while they are compiled for the tests, as
# `cargo clippy` itself does it (clippy-driver as the wrapper of rustc for the
# workspace's members, its arguments in CLIPPY_ARGS): one compilation instead of a
# `cargo clippy` pass beside the build. Exported, so that every cargo command below
# (scripts/test-oci.sh's too) finds the same build and rebuilds nothing.
if [ -z "${SKIP_LINT:-}" ]; then
  clippy_driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)
  [ -n "$clippy_driver" ] || { echo "clippy-driver not found: rustup component add clippy"; exit 1; }
  export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
fi
step "build (once, clippy -D warnings on our crates; every test below reuses these binaries)"
cargo build --workspace --all-targets --quiet
cargo test --workspace --no-run --quiet 2>/dev/null || cargo test --workspace --no-run

# The fuzz targets' instrumented build needs the CPU but nothing the tests make, and
# the test steps below wait on sandboxes, sockets, package downloads and Python
# part of the time: it runs beside them at the lowest CPU priority, in its own
# target directory, and is awaited before the fuzzers run.
fuzz_build_log=$(mktemp /tmp/phantom-suite-fuzz-build.XXXXXX)
scratch_paths+=("$fuzz_build_log")
set -m  # a process group of its own, so that an early exit stops all of it
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS nice -n 19 ./scripts/fuzz.sh --build-only >"$fuzz_build_log" 2>&1 &
fuzz_build=$!
set +m
step "in the background until the fuzzing step: the fuzz targets' build (pid $fuzz_build)"
trap 'kill -- "-$fuzz_build" 2>/dev/null || true; rm -rf "${scratch_paths[@]}"' EXIT

step "tests as $(id -un)"
cargo test --workspace -- --test-threads=2

step "HTTP API: promtool on /metrics, schemathesis on the OpenAPI document"
./scripts/test-api.sh

if [ "$(id -u)" = 0 ]; then
  # The same assertions, served by a supervisor: one matrix in three columns — cold
  # (above), warm (pre-built sandboxes) and forked (a zygote forks every run).
  # phantom-cli's integration test executables, "NAME PATH" a line, as the workspace
  # build made them: `cargo test -p phantom-cli` would build them (and phantom-cli's
  # dependencies) again, with that package's features alone — minutes, in CI.
  cli_tests() {
    cargo test --workspace --tests --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m.get("executable")
            and m["target"]["kind"] == ["test"] and "/crates/phantom-cli/" in m["manifest_path"]):
        print(m["target"]["name"], m["executable"])'
  }
  iso=$(cli_tests | sed -n 's|^isolation ||p')
  [ -x "$iso" ] || { echo "the isolation test executable was not found"; exit 1; }
  isolation_served() {  # START SUPERVISOR-ARGS...
    local start=$1; shift
    local sock_dir sup_pid
    sock_dir=$(mktemp -d /tmp/phantom-warm-suite.XXXXXX)
    scratch_paths+=("$sock_dir")
    target/debug/phantom-supervisor "$@" --socket "$sock_dir/s.sock" 2>"$sock_dir/log" &
    sup_pid=$!
    for _ in $(seq 100); do [ -S "$sock_dir/s.sock" ] && break; sleep 0.05; done
    PHANTOM_SUPERVISOR_SOCKET="$sock_dir/s.sock" PHANTOM_EXPECT_WARM=1 PHANTOM_EXPECT_START="$start" \
      "$iso" --test-threads=1 || { cat "$sock_dir/log"; kill "$sup_pid"; exit 1; }
    kill -TERM "$sup_pid"; wait "$sup_pid" || true
    rm -rf "$sock_dir"
  }
  step "isolation tests on the warm path (a supervisor pools the default profile)"
  # A floor of 4: every run finds a sandbox ready, however the demand-sized pool shrinks.
  isolation_served warm --profiles default --zygote-pools 4 --pool-floor 4
  step "isolation tests on the fork path (a zygote forks every run of the default profile)"
  isolation_served forked --zygote default

  step "integration tests as unprivileged user $TEST_USER"
  # The test binaries and the binaries they run are copied where that user can reach
  # them (a clone under /root is not).
  stage=$(mktemp -d /tmp/phantom-suite.XXXXXX)
  scratch_paths+=("$stage")
  chmod 755 "$stage"
  cli_tests | while read -r name exe; do cp "$exe" "$stage/test-$name"; done
  ls "$stage"/test-* >/dev/null  # fail loudly if none was found
  cp target/debug/phantom target/debug/phantom-probe target/debug/phantom-supervisor target/debug/phantom-mcp \
    target/debug/libphantom_zygote.so "$stage/"
  chmod 755 "$stage"/*
  for t in "$stage"/test-*; do
    echo "-- $(basename "$t") as $TEST_USER"
    (cd "$stage" && runuser -u "$TEST_USER" -- env -i PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp \
        PHANTOM_BIN="$stage/phantom" PHANTOM_PROBE="$stage/phantom-probe" \
        PHANTOM_SKIP_LOG="$skip_log" \
        "$t" --test-threads=2)
  done
  rm -rf "$stage"
fi

step "MCP server against the official Python SDK and the conformance suite"
# Installs pinned versions of both into a throwaway directory (see the script).
./scripts/test-mcp.sh target/debug/phantom-mcp

step "E2B's Python SDKs (PyPI e2b, e2b-code-interpreter) against phantom-supervisor --e2b-bind"
./scripts/test-e2b.sh target/debug

step "phantom-oci under containerd's runc shim (ctr run --runc-binary)"
./scripts/test-oci.sh

step "the fuzz targets' build (started after the build)"
if ! wait "$fuzz_build"; then
  cat "$fuzz_build_log"
  echo "the fuzz targets' build failed (above)"
  exit 1
fi
cat "$fuzz_build_log"

step "fuzzing: each target for a bounded time (longer runs: fuzz/README.md)"
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS ./scripts/fuzz.sh "${FUZZ_SECONDS:-10}"

step "skipped tests"
if [ -s "$skip_log" ]; then
  sort "$skip_log" | uniq -c | sed 's/^ *\([0-9]*\) /\1x /'
  # Regression: lines written in two pieces by parallel tests came out blank or
  # doubled (`skip log lines interleaved`).
  if grep -qx '' "$skip_log"; then
    echo "the skip log has a blank line: a test writes its skip line in more than one write"
    exit 1
  fi
else
  echo "none"
fi

step "nothing left behind"
# Only what the suite made counts: whatever was there before it started (another
# user's sandboxes, a supervisor in service) is in the baseline and left alone.
if leaks=$(leftovers | grep -vxFf "$baseline"); then
  echo "$leaks"
  echo "the suite left things behind on the host"
  exit 1
fi
echo "no leftover mounts, cgroups, processes or workspaces"
