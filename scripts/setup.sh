#!/usr/bin/env bash
# Idempotent setup of a fresh machine: a Python virtualenv with llmscale and its test tools, and
# the test bed's components (built once into ~/.cache/llmscale, keyed by version).
#   scripts/setup.sh            Python env + all components
#   scripts/setup.sh python     only the Python env
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${LLMSCALE_VENV:-$ROOT/.venv}
PY=${PYTHON_BOOTSTRAP:-python3}

say() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for tool in curl openssl; do command -v $tool >/dev/null 2>&1 || need_apt+=("$tool"); done
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]} from Debian"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"; } >/dev/null \
    || { say "apt-get install ${need_apt[*]} failed"; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV" || { say "python3 -m venv failed: install Python >= 3.11 with venv"; exit 1; }
fi
"$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "Python >= 3.11 is required"; exit 1; }
stamp="$VENV/.llmscale-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  say "installing llmscale and test tools into $VENV (pip)"
  "$VENV/bin/pip" install --quiet --upgrade pip >/dev/null
  "$VENV/bin/pip" install --quiet -e "$ROOT[test]" || { say "pip install failed"; exit 1; }
  touch "$stamp"
fi
say "python: $("$VENV/bin/python" --version), llmscale $("$VENV/bin/llmscale" --version | cut -d' ' -f2)"

[ "${1:-all}" = python ] && exit 0
"$ROOT/e2e/bin/build-components.sh" all
"$ROOT/scripts/build-image.sh"
