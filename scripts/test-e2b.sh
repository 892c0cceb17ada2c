#!/usr/bin/env bash
# The E2B surface against E2B's own, unchanged SDKs (issue 14): the Python SDKs from
# PyPI (`e2b`, `e2b-code-interpreter`, pinned below) in a throwaway venv drive a real
# `phantom-supervisor --e2b-bind` through the environment variables a user sets:
#   E2B_API_URL=http://ADDR E2B_SANDBOX_URL=http://ADDR E2B_API_KEY=<phantom keys add --e2b>
# Called by scripts/test.sh after the build; a failed install fails the suite.
#
#   ./scripts/test-e2b.sh [target/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=$(realpath "${1:-target/debug}")
E2B_VERSION=2.63.0
E2B_CI_VERSION=2.11.5
E2B_JS_VERSION=2.51.0
E2B_JS_CI_VERSION=2.8.0
work=$(mktemp -d /tmp/phantom-e2b-test.XXXXXX)
chmod 755 "$work"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "-- installing e2b==$E2B_VERSION e2b-code-interpreter==$E2B_CI_VERSION into a throwaway venv"
/usr/bin/python3 -m venv "$work/venv" || { echo "test-e2b: python3 -m venv failed (apt-get install python3-venv)"; exit 1; }
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "e2b==$E2B_VERSION" "e2b-code-interpreter==$E2B_CI_VERSION" \
  || { echo "test-e2b: pip install of the E2B SDKs failed"; exit 1; }

echo "-- installing npm e2b@$E2B_JS_VERSION @e2b/code-interpreter@$E2B_JS_CI_VERSION into a throwaway dir"
command -v npm >/dev/null || { echo "test-e2b: npm is needed (apt-get install npm)"; exit 1; }
mkdir "$work/npm"
(cd "$work/npm" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error \
    "e2b@$E2B_JS_VERSION" "@e2b/code-interpreter@$E2B_JS_CI_VERSION") \
  || { echo "test-e2b: npm install of the E2B SDKs failed"; exit 1; }

E2B_JS_MODULES="$work/npm/node_modules" "$work/venv/bin/python" crates/phantom-server/tests/e2b/sdk_test.py "$BIN_DIR"
