#!/usr/bin/env bash
# The README's test command: makes the venv and finds the host (scripts/env.sh), then runs pytest.
# Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PACK_DIR"
exec "$PY" -m pytest "$@"
