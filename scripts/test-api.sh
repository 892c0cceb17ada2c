#!/usr/bin/env bash
# The HTTP API against tools that know the formats: promtool (Debian's prometheus
# package, unpacked, not installed — no service is started) on /metrics, and
# schemathesis (PyPI, in a throwaway venv) on the OpenAPI document. Called by
# scripts/test.sh after the build; uses the binaries in target/debug.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/phantom-api-check.XXXXXX)
chmod 755 "$work"
sup=""
at() { echo "-- [${SECONDS}s] $*"; }  # where the step's time goes
cleanup() {
  at "stopping the supervisor"
  if [ -n "$sup" ]; then kill -TERM "$sup" 2>/dev/null || true; wait "$sup" 2>/dev/null || true; fi
  at "stopped"
  PHANTOM_STATE_DIR="$work/state" target/debug/phantom destroy --all --every-owner >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if command -v promtool >/dev/null; then
  promtool=promtool
else
  (cd "$work" && apt-get download prometheus >/dev/null) || { echo "cannot fetch Debian's prometheus package for promtool"; exit 1; }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/prom"
  promtool="$work/prom/usr/bin/promtool"
fi
"$promtool" --version | head -1
at "schemathesis into a venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
"$work/venv/bin/schemathesis" --version

export PHANTOM_STATE_DIR="$work/state"
mkdir -p "$PHANTOM_STATE_DIR"
at "starting a supervisor"
key=$(target/debug/phantom keys add api-check --rate 100000 --burst 10000 --max-concurrent 8 2>/dev/null)
target/debug/phantom-supervisor --bind 127.0.0.1:0 --socket "$work/pool.sock" --zygote-pools 2 \
  --profiles default 2>"$work/log" &
sup=$!
port=""
for _ in $(seq 300); do
  port=$(sed -n 's|.*HTTP API on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$work/log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/log"; echo "the server did not start"; exit 1; }
base="http://127.0.0.1:$port"

# A few runs first, so that histograms and pools have values.
python3 - "$base" "$key" <<'PY'
import json, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
for body in ({"argv": ["true"]}, {"language": "python", "code": "print(1)"}, {"argv": ["sh", "-c", "exit 3"]}):
    req = urllib.request.Request(base + "/api/v2/run", data=json.dumps(body).encode(), headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200, r.status
PY

at "promtool check metrics"
python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" "$base/metrics" > "$work/metrics.txt"
problems=$("$promtool" check metrics < "$work/metrics.txt" 2>&1 || true)
# The seed names this family with a unit suffix (`_ms`), which promtool's linter flags;
# every other finding fails the suite.
other=$(printf '%s\n' "$problems" | grep -v '^phantom_performance_p95_spawn_time_ms metric names should not contain abbreviated units$' | grep -v '^$' || true)
if [ -n "$other" ]; then echo "promtool check metrics:"; echo "$other"; exit 1; fi
echo "promtool: ok ($(grep -c '^# TYPE' "$work/metrics.txt") families)"

at "schemathesis (bounded: 10 examples per operation, deterministic)"
# From the work directory: schemathesis keeps a cache (.schemathesis/) where it runs.
(cd "$work" && "$work/venv/bin/schemathesis" run "$base/api/v2/openapi.json" \
  --header "X-API-Key: $key" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples 10 --generation-deterministic --request-timeout 60 --no-color) \
  || { echo "server log (a 500 names an error id found here):"; tail -40 "$work/log"; exit 1; }
