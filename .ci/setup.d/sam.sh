#!/usr/bin/env bash
# AWS SAM CLI (PyPI `aws-sam-cli`) in its own virtualenv `.venv-sam`: it pins
# its own boto3/botocore/cfn-lint, which must not move the project's. Used by
# tests/test_template.py (`sam validate --lint`) and the README's "Deploy to
# AWS" steps. Idempotent: a no-op when already installed.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.venv-sam
SAM_VERSION="${RTSTREAM_SAM_VERSION:-}"   # empty = the newest release

if [ -x "$VENV/bin/sam" ] && "$VENV/bin/sam" --version >/dev/null 2>&1; then
  echo "sam: $VENV ready ($("$VENV/bin/sam" --version))"
  exit 0
fi

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check "aws-sam-cli${SAM_VERSION:+==$SAM_VERSION}"
echo "sam: installed in $VENV ($("$VENV/bin/sam" --version))"
