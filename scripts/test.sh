#!/usr/bin/env bash
# The README's test command: makes the venv and finds the host (scripts/env.sh), installs Debian's
# Chromium for the browser test where missing, then runs pytest. Extra arguments go to pytest.
# --core first: only the tests of the plain-torch core (marked hostfree), in a venv without ComfyUI.
if [ "${1:-}" = --core ]; then
  shift
  CUPSCALE_CORE=1 source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
  cd "$PACK_DIR"
  CUPSCALE_CORE=1 exec "$PY" -m pytest -m hostfree "$@"
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PACK_DIR"
bash scripts/install_browser.sh || echo "Chromium is missing: tests/test_browser.py will fail (see the message above)." >&2
exec "$PY" -m pytest "$@"
