# Sourced by the other scripts: finds the ComfyUI host and makes the venv that runs the pack (with
# CUPSCALE_CORE=1: no host, a venv for the plain-torch core and its tests).
# Host order (README "Host", scripts/hosts.sh find_host): $COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds
# this pack, v0.33.0 from an archive or under ~/comfy (else a clone where the network allows), another release.
set -euo pipefail

PACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$PACK_DIR/scripts/hosts.sh"

# make_venv VENV "PINS" REQUIREMENTS...: a python3.11 venv with the pinned torch, remade only when the
# requirements or the pins change.
make_venv() {
  local venv=$1 stamp pins; read -r -a pins <<< "$2"; shift 2
  stamp=$( (echo "${pins[*]}"; cat "$@") | sha1sum | cut -c1-12)
  if [ -f "$venv/.cupscale-stamp" ] && [ "$(cat "$venv/.cupscale-stamp")" = "$stamp" ]; then return; fi
  echo "Creating venv $venv (python3.11, ${pins[*]}) ..." >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3.11 -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" "${pins[@]}"
  # The requirements together, in one resolve, without their unpinned torch lines.
  awk 1 "$@" | grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' > "$venv/requirements.txt"
  "${pip[@]}" -r "$venv/requirements.txt" "${pins[@]}"
  echo "$stamp" > "$venv/.cupscale-stamp"
}

VENVS=${XDG_CACHE_HOME:-$HOME/.cache}/cupscale
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "${CUPSCALE_CORE:-}" = 1 ]; then
  # The plain-torch core and its tests (marked hostfree) need no ComfyUI: torch and the pack's requirements.
  VENV=${CUPSCALE_VENV:-$VENVS/venv-core}
  make_venv "$VENV" "torch==2.13.0" "$PACK_DIR/requirements.txt" "$PACK_DIR/requirements-dev.txt"
  PY="$VENV/bin/python"
  return 0
fi

COMFYUI_PATH=$(find_host)
export COMFYUI_PATH
COMFYUI_VERSION=$(host_version "$COMFYUI_PATH")
is_supported "$COMFYUI_VERSION" ||
  echo "ComfyUI at $COMFYUI_PATH is v$COMFYUI_VERSION; the pack is tested on ${SUPPORTED_HOSTS[*]}." >&2
# One venv per host release, kept outside the checkout so that clean clones (CI) reuse it.
VENV=${CUPSCALE_VENV:-$VENVS/venv-$COMFYUI_VERSION}
make_venv "$VENV" "$(torch_pins "$COMFYUI_VERSION")" "$COMFYUI_PATH/requirements.txt" \
  "$PACK_DIR/scripts/host-extras.txt" "$PACK_DIR/requirements.txt" "$PACK_DIR/requirements-dev.txt"
# .venv/bin/python (bench/, docs) is the venv of the host used last; a .venv folder of old is left alone.
[ -d "$PACK_DIR/.venv" ] && [ ! -L "$PACK_DIR/.venv" ] || ln -sfn "$VENV" "$PACK_DIR/.venv"
PY="$VENV/bin/python"
