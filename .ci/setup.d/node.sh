#!/usr/bin/env bash
# Node 20+ and npm for tests/clients/test_js_package.py (the rtstream-client npm
# package: npm ci, tsc, npm pack, node --test). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

major() { node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }
if ! command -v npm >/dev/null 2>&1 || [ "$(major || echo 0)" -lt 20 ]; then
  echo "node: installing nodejs and npm with apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd clients/js && npm ci --no-audit --no-fund >/dev/null)
echo "node: $(node --version); npm $(npm --version)"
