# Sourced by the other scripts: finds the ComfyUI host and makes the venv that runs the pack.
# Host order (README "Host"): $COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this pack,
# ~/comfy/ComfyUI, else a clone of the pinned tag where the network allows.
set -euo pipefail

PACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMFYUI_TAG=v0.3.64
COMFYUI_REPO=https://github.com/comfyanonymous/ComfyUI
VENV=${CUPSCALE_VENV:-$PACK_DIR/.venv}

is_comfyui() { [ -f "$1/main.py" ] && [ -d "$1/comfy" ] && [ -f "$1/nodes.py" ]; }

find_host() {
  if [ -n "${COMFYUI_PATH:-}" ]; then
    is_comfyui "$COMFYUI_PATH" || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (no main.py, comfy/, nodes.py)." >&2; return 1; }
    echo "$COMFYUI_PATH"; return
  fi
  local parent; parent=$(dirname "$PACK_DIR")
  if [ "$(basename "$parent")" = custom_nodes ] && is_comfyui "$(dirname "$parent")"; then
    dirname "$parent"; return
  fi
  if is_comfyui "$HOME/comfy/ComfyUI"; then echo "$HOME/comfy/ComfyUI"; return; fi
  echo "No ComfyUI found; cloning $COMFYUI_TAG into ~/comfy/ComfyUI ..." >&2
  if git clone --quiet --depth 1 --branch "$COMFYUI_TAG" "$COMFYUI_REPO" "$HOME/comfy/ComfyUI" >&2 2>/dev/null; then
    echo "$HOME/comfy/ComfyUI"; return
  fi
  cat >&2 <<MSG
No ComfyUI host could be found or cloned. Provide ComfyUI $COMFYUI_TAG in one of these ways:
  - export COMFYUI_PATH=/path/to/ComfyUI
  - put this pack in ComfyUI/custom_nodes/
  - place ComfyUI at ~/comfy/ComfyUI   (git clone --branch $COMFYUI_TAG $COMFYUI_REPO ~/comfy/ComfyUI)
MSG
  return 1
}

# torch and torchvision are pinned together: spandrel (ComfyUI's upscale-model loader) needs
# torchvision, and 2.14.1/0.29.1 is the pair that installs and imports together on the CPU here.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

make_venv() {
  local host=$1 stamp
  stamp=$(cat "$host/requirements.txt" "$PACK_DIR/requirements.txt" "$PACK_DIR/requirements-dev.txt" "$PACK_DIR/scripts/env.sh" | sha1sum | cut -c1-12)
  if [ -f "$VENV/.cupscale-stamp" ] && [ "$(cat "$VENV/.cupscale-stamp")" = "$stamp" ]; then return; fi
  echo "Creating venv $VENV (python3.11) ..." >&2
  rm -rf "$VENV"
  python3.11 -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" "${TORCH_PINS[@]}"
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$host/requirements.txt" > "$VENV/host-requirements.txt"
  "${pip[@]}" -r "$VENV/host-requirements.txt" torchsde requests "${TORCH_PINS[@]}"
  "${pip[@]}" -r "$PACK_DIR/requirements.txt" -r "$PACK_DIR/requirements-dev.txt" "${TORCH_PINS[@]}"
  echo "$stamp" > "$VENV/.cupscale-stamp"
}

COMFYUI_PATH=$(find_host)
export COMFYUI_PATH
make_venv "$COMFYUI_PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY="$VENV/bin/python"
