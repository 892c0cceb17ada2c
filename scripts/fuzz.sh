#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (libFuzzer, coverage-instrumented on the stable
# toolchain) and runs each for a bounded time. Fails with the path of the input that
# crashed a target (or hung it, or took too much memory).
#
#   ./scripts/fuzz.sh                 # every target, 20 s each (CI: FUZZ_SECONDS in test.sh)
#   ./scripts/fuzz.sh 600             # every target, 10 minutes each
#   ./scripts/fuzz.sh 600 http_head   # one target (or several, by name)
#   FUZZ_JOBS=1 ./scripts/fuzz.sh     # one target at a time (default: one per core)
#   FUZZ_TARGET_DIR=DIR ./scripts/fuzz.sh  # build there (default: fuzz/target)
#   ./scripts/fuzz.sh --build-only    # build every target, run none
#
# Each target grows its corpus in fuzz/corpus/TARGET (kept between runs, not
# committed), starting from the seeds in fuzz/seeds/TARGET (committed) and, for the
# policy target, the built-in profiles in profiles/. A crash is saved as
# fuzz/artifacts/TARGET/crash-* (or timeout-*, oom-*); replay it with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
# fuzz/README.md says more.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
fuzz=$(pwd)
build_only=""
if [ "${1:-}" = --build-only ]; then build_only=1; shift; fi
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(policy http_head socks5 image_tar image_layer api_request engine_protocol init_protocol)
fi
jobs=${FUZZ_JOBS:-$(nproc)}
# Where the instrumented build goes (its own: the flags differ from the workspace's).
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$fuzz/target}

command -v cargo >/dev/null || { echo "fuzz.sh: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
command -v c++ >/dev/null || { echo "fuzz.sh: a C++ compiler builds libFuzzer: install g++ (apt-get install g++)" >&2; exit 1; }

# The instrumentation cargo-fuzz adds, with stable-only flags (no -Z, no sanitizer):
# SanitizerCoverage's 8-bit counters, PC table, comparison tracing and stack depth
# feed libFuzzer. --target keeps the flags off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Coverflow-checks"
started=$(date +%s)
echo "fuzz.sh: building ${targets[*]}"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
# Not --locked: when a crate under test gains a dependency, cargo adds it to
# fuzz/Cargo.lock (commit that) and keeps every version already pinned there.
cargo build --release --quiet --target "$host" "${bins[@]}"
built=$(date +%s)
echo "fuzz.sh: built in $((built - started)) s"
[ -z "$build_only" ] || exit 0

# The layer target unpacks into a scratch directory of its own; removed however we end.
# (tmpfs when there is one: each input creates and removes a tree).
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$shm/phantom-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export PHANTOM_FUZZ_SCRATCH="$scratch"

# Per target: the largest input worth trying.
max_len() {
  case $1 in
    policy) echo 16384 ;;
    http_head) echo 20480 ;;
    socks5) echo 1024 ;;
    image_tar | image_layer) echo 65536 ;;
    *) echo 65536 ;;
  esac
}

run_one() {
  local t=$1 corpus=$fuzz/corpus/$1 artifacts=$fuzz/artifacts/$1 log=$scratch/$1.log
  mkdir -p "$corpus" "$artifacts"
  local dirs=("$corpus")
  [ -d "$fuzz/seeds/$t" ] && dirs+=("$fuzz/seeds/$t")
  [ "$t" = policy ] && dirs+=("$fuzz/../profiles")
  local dict=()
  [ -f "$fuzz/dicts/$t.dict" ] && dict=(-dict="$fuzz/dicts/$t.dict")
  # -timeout: one input taking longer is a hang; -rss_limit_mb: more memory than that
  # is a finding. New inputs go to the first corpus directory.
  if "$CARGO_TARGET_DIR/$host/release/$t" "${dirs[@]}" "${dict[@]}" \
      -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
      -rss_limit_mb=1024 -print_final_stats=1 \
      -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz.sh: $t: ok, $execs inputs ($rate/s), corpus of $(find "$corpus" -type f | wc -l) inputs"
  else
    # What broke: the panic (or libFuzzer's timeout / out-of-memory report).
    { grep -m1 -A3 'panicked at' "$log" || true
      grep -m1 -A1 'ERROR: libFuzzer' "$log" || true; } >&2
    local crash
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "fuzz.sh: $t FAILED: ${crash:-see the log above} (replay: $CARGO_TARGET_DIR/$host/release/$t ${crash:-INPUT})" >&2
    return 1
  fi
}

failed=0
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
echo "fuzz.sh: $((${#targets[@]})) targets, $(($(date +%s) - started)) s in all"
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: a target failed (its input is named above)" >&2
  exit 1
fi
