#!/usr/bin/env bash
# phantom-oci vs Debian's runc under the same private containerd: see
# scripts/bench-oci.py. Usage: [PHANTOM_OCI_BINARY=target/release/phantom-oci] scripts/bench-oci.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
PHANTOM_OCI_RUN="python3 scripts/bench-oci.py ${1:-30}" exec ./scripts/test-oci.sh
