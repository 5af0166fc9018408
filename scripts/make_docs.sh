#!/usr/bin/env bash
# Regenerates the README's pictures: the UI screenshots and template thumbnails (browser test with
# CUPSCALE_DOCS=1), the C-Upscale stage figure, and LIIF's released-weights crops (its PSNR table is printed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PACK_DIR"
bash scripts/install_browser.sh
CUPSCALE_DOCS=1 "$PY" -m pytest -q -p no:cacheprovider -m browser tests/test_browser.py
"$PY" scripts/method_figure.py
"$PY" bench/liif_released.py
