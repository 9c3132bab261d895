#!/usr/bin/env bash
# The AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs, Apache-2.0) that
# tests/contract validates docs/asyncapi.yaml against. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION="6.11.1"
DEST=.venv/share/asyncapi-specs-$VERSION
[ -f "$DEST/3.0.0.json" ] && { echo "asyncapi-specs: $DEST ready"; exit 0; }

if ! command -v npm >/dev/null 2>&1; then
  echo "asyncapi-specs: installing nodejs and npm with apt"
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@asyncapi/specs@$VERSION" >/dev/null && tar xzf asyncapi-specs-$VERSION.tgz)
mkdir -p "$DEST"
cp "$tmp/package/schemas/3.0.0-without-\$id.json" "$DEST/3.0.0.json"
cp "$tmp/package/LICENSE" "$DEST/LICENSE" 2>/dev/null || true
echo "asyncapi-specs: @asyncapi/specs $VERSION in $DEST"
