#!/usr/bin/env bash
# The README's test command: makes the venv and finds the host (scripts/env.sh), installs Debian's
# Chromium for the browser test where missing, then runs pytest.
# Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PACK_DIR"
bash scripts/install_browser.sh || echo "Chromium is missing: tests/test_browser.py will fail (see the message above)." >&2
exec "$PY" -m pytest "$@"
