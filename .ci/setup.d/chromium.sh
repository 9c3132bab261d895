#!/usr/bin/env bash
# Headless Chromium for tests/browser: Debian's `chromium` and `chromium-driver`
# (apt) plus the selenium bindings in the project venv. Idempotent: a no-op when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromium: installing chromium and chromium-driver with apt"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if ! .venv/bin/python -c "import selenium" >/dev/null 2>&1; then
  .venv/bin/pip install -q "selenium>=4.20"
fi

echo "chromium: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version 2>/dev/null | head -n1)"
