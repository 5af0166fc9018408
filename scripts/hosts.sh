# Sourced by scripts/env.sh and .ci/run: which ComfyUI hosts the pack supports, where they are looked
# for, and what each needs in its venv. Defines functions only.

DEFAULT_HOST=0.33.0
SUPPORTED_HOSTS=(0.33.0 0.14.1 0.3.64)
COMFYUI_REPO=https://github.com/Comfy-Org/ComfyUI
HOSTS_DIR=${CUPSCALE_HOSTS_DIR:-$HOME/comfy}
_PACK=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Release archives (ComfyUI-<version>.tar.gz beside a SHA256SUMS) for machines without the network;
# each is unpacked once, after its checksum, into a writable cache outside the checkout.
HOST_ARCHIVES=${CUPSCALE_HOST_ARCHIVES:-$(cd "$_PACK/../shared/hosts" 2>/dev/null && pwd || true)}
UNPACKED_DIR=${CUPSCALE_UNPACKED_HOSTS:-${XDG_CACHE_HOME:-$HOME/.cache}/cupscale/hosts}

is_comfyui() { [ -f "$1/main.py" ] && [ -d "$1/comfy" ] && [ -f "$1/nodes.py" ]; }

# The release a ComfyUI folder holds, from its own comfyui_version.py (or pyproject.toml).
host_version() {
  local v
  v=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -n 1)
  [ -n "$v" ] || v=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$1/pyproject.toml" 2>/dev/null | head -n 1)
  echo "${v:-unknown}"
}

is_supported() { local v; for v in "${SUPPORTED_HOSTS[@]}"; do [ "$v" = "$1" ] && return 0; done; return 1; }

# Every ComfyUI under $HOSTS_DIR (ComfyUI, ComfyUI-<version>, ...), then those unpacked from archives,
# one "version<TAB>path" a line.
hosts_present() {
  local dir
  for dir in "$HOSTS_DIR"/ComfyUI "$HOSTS_DIR"/ComfyUI-* "$UNPACKED_DIR"/ComfyUI-*; do
    is_comfyui "$dir" && printf '%s\t%s\n' "$(host_version "$dir")" "$dir"
  done
  return 0
}

# The archive of release $1 in $HOST_ARCHIVES, checked against its SHA256SUMS, unpacked once into
# $UNPACKED_DIR; prints the unpacked folder, or nothing when there is no such archive.
unpack_archive() {
  local name="ComfyUI-$1" tmp
  [ -n "$HOST_ARCHIVES" ] && [ -f "$HOST_ARCHIVES/$name.tar.gz" ] || return 0
  if ! is_comfyui "$UNPACKED_DIR/$name"; then
    if ! (cd "$HOST_ARCHIVES" && grep -E "[ *]$name\.tar\.gz\$" SHA256SUMS | sha256sum -c --quiet -) >&2; then
      echo "$HOST_ARCHIVES/$name.tar.gz does not match its SHA256SUMS; not using it." >&2
      return 0
    fi
    echo "Unpacking $HOST_ARCHIVES/$name.tar.gz into $UNPACKED_DIR ..." >&2
    mkdir -p "$UNPACKED_DIR"
    tmp=$(mktemp -d "$UNPACKED_DIR/.unpack.XXXXXX")
    tar xzf "$HOST_ARCHIVES/$name.tar.gz" -C "$tmp" && rm -rf "${UNPACKED_DIR:?}/$name" && mv "$tmp/$name" "$UNPACKED_DIR/$name"
    rm -rf "$tmp"
  fi
  is_comfyui "$UNPACKED_DIR/$name" && echo "$UNPACKED_DIR/$name"
  return 0
}

# ComfyUI holding release $1: its archive unpacked, else the first under $HOSTS_DIR; or nothing.
host_of_version() {
  local found
  found=$(unpack_archive "$1")
  [ -n "$found" ] || found=$(hosts_present | awk -F'\t' -v v="$1" '$1 == v { print $2; exit }')
  echo "$found"
}

# torch, torchvision (and torchaudio) that install and import together for a host of release $1.
# v0.33 imports torchaudio when comfy.sd loads; the older hosts start without it.
torch_pins() {
  if [ "$(printf '0.33.0\n%s\n' "$1" | sort -V | head -n 1)" = 0.33.0 ]; then
    echo "torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"
  else
    echo "torch==2.14.1 torchvision==0.29.1"
  fi
}

# The host to use, in the README's order: $COMFYUI_PATH, the ComfyUI whose custom_nodes/ holds this pack,
# v$DEFAULT_HOST from an archive or under $HOSTS_DIR (else a clone where the network allows), another release.
find_host() {
  if [ -n "${COMFYUI_PATH:-}" ]; then
    is_comfyui "$COMFYUI_PATH" || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI folder (no main.py, comfy/, nodes.py)." >&2; return 1; }
    echo "$COMFYUI_PATH"; return
  fi
  local parent found; parent=$(dirname "$_PACK")
  if [ "$(basename "$parent")" = custom_nodes ] && is_comfyui "$(dirname "$parent")"; then
    dirname "$parent"; return
  fi
  found=$(host_of_version "$DEFAULT_HOST")
  if [ -n "$found" ]; then echo "$found"; return; fi
  echo "No ComfyUI v$DEFAULT_HOST under $HOSTS_DIR; cloning it into $HOSTS_DIR/ComfyUI-$DEFAULT_HOST ..." >&2
  if git clone --quiet --depth 1 --branch "v$DEFAULT_HOST" "$COMFYUI_REPO" "$HOSTS_DIR/ComfyUI-$DEFAULT_HOST" >&2 2>/dev/null; then
    echo "$HOSTS_DIR/ComfyUI-$DEFAULT_HOST"; return
  fi
  local v
  for v in "${SUPPORTED_HOSTS[@]}"; do
    found=$(host_of_version "$v")
    if [ -n "$found" ]; then
      echo "The clone failed; using ComfyUI v$v at $found (the default is v$DEFAULT_HOST)." >&2
      echo "$found"; return
    fi
  done
  echo "No ComfyUI host could be found or cloned. Provide one of ${SUPPORTED_HOSTS[*]}:" >&2
  host_recipe >&2
  return 1
}

# How to get the default host, for the messages that stop when it is missing.
host_recipe() {
  cat <<MSG
  - export COMFYUI_PATH=/path/to/ComfyUI   (any supported release: ${SUPPORTED_HOSTS[*]})
  - or put this pack in ComfyUI/custom_nodes/
  - or place ComfyUI v$DEFAULT_HOST at $HOSTS_DIR/ComfyUI-$DEFAULT_HOST:
      git clone --depth 1 --branch v$DEFAULT_HOST $COMFYUI_REPO $HOSTS_DIR/ComfyUI-$DEFAULT_HOST
    (the other releases side by side: $HOSTS_DIR/ComfyUI-0.14.1, $HOSTS_DIR/ComfyUI-0.3.64)
  - or point CUPSCALE_HOST_ARCHIVES at a folder of ComfyUI-<version>.tar.gz with a SHA256SUMS
    (looked for now: ${HOST_ARCHIVES:-none})
MSG
}
