#!/usr/bin/env bash
# MiniStack (PyPI `ministack`, MIT): the LocalStack-compatible emulator that
# tests/ministack deploys template.yaml into. It gets its own virtualenv
# because it pins its own botocore (boto3 is pinned to match), and its Python
# is the interpreter it runs every Lambda with, so prefer the version the
# template's Runtime declares (deploy-local finds the version it got by a probe
# function and builds for it). Idempotent: a no-op when already installed.
#
# MINISTACK_PYTHON=python3.11 MINISTACK_VENV=.venv-ministack-py311 bash .ci/setup.d/ministack.sh
# builds a second one on another interpreter (tests/ministack runs deploy-local
# against both).
set -euo pipefail
cd "$(dirname "$0")/../.."

MINISTACK_VERSION="1.5.33"
BOTO3_VERSION="1.43.106"   # == ministack's botocore pin
VENV="${MINISTACK_VENV:-.venv-ministack}"

want=""
if [ -n "${MINISTACK_PYTHON:-}" ]; then
  want="$MINISTACK_PYTHON"
elif [ -f template.yaml ]; then
  want=$(grep -oE 'python3\.[0-9]+' template.yaml | head -n1 || true)
fi

if [ -x "$VENV/bin/python" ] \
   && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('ministack') == '$MINISTACK_VERSION' and m.version('boto3') == '$BOTO3_VERSION' else 1)" 2>/dev/null \
   && { [ -z "$want" ] || [ "$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')" = "$want" ] || [ -f "$VENV/.runtime-fallback" ]; }; then
  echo "ministack: $VENV ready ($("$VENV/bin/python" --version))"
  exit 0
fi

pick_python() {
  local candidates=()
  if [ -n "$want" ]; then
    candidates+=("$want")
    for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"${want#python}".*/bin; do
      [ -x "$d/$want" ] && candidates+=("$d/$want")
    done
  fi
  candidates+=(python3)
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

py=$(pick_python) || { echo "ministack: no Python >= 3.10 found" >&2; exit 1; }
rm -rf "$VENV"
"$py" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "ministack==$MINISTACK_VERSION" "boto3==$BOTO3_VERSION"
got=$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
if [ -n "$want" ] && [ "$got" != "$want" ]; then
  # Lambdas will run on $got; deploy-local builds their dependencies for it.
  echo "ministack: $want not found, Lambdas will run on $got" >&2
  touch "$VENV/.runtime-fallback"
fi
echo "ministack: installed ministack $MINISTACK_VERSION in $VENV ($("$VENV/bin/python" --version))"
