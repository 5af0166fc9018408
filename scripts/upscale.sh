#!/usr/bin/env bash
# The README's main job: upscale an image with a shipped workflow on an in-process ComfyUI.
# Arguments go to scripts/run_workflow.py (--image, --output, --workflow, --checkpoint, --tiny-models, --set).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PY" "$PACK_DIR/scripts/run_workflow.py" "$@"
