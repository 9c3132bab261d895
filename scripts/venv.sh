# Sourced by scripts/dev and scripts/test: the project virtualenv (.venv) with
# an extra of pyproject.toml installed (editable), idempotently: pip runs only
# when .venv is missing or pyproject.toml changed since the last install.
ensure_venv() {
  local extra="$1" stamp=".venv/.rtstream-installed" want have
  want="$extra $(sha256sum pyproject.toml | cut -d' ' -f1)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  have=$(cat "$stamp" 2>/dev/null || true)
  # [dev] contains [local]: a venv set up for the tests also runs the system
  if [ "$have" = "$want" ] || { [ "$extra" = local ] && [ "$have" = "dev ${want#* }" ]; }; then
    return 0
  fi
  echo "setup: installing .[$extra] into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extra]"
  echo "$want" > "$stamp"
}
