#!/usr/bin/env bash
# The browser test (tests/test_browser.py) drives Debian's Chromium with Playwright. Installs the
# chromium package when /usr/bin/chromium is missing; does nothing otherwise. Needs root (or sudo)
# and Debian's package archive; Playwright's own browser download is never used.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
SUDO=
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install_browser.sh: $CHROMIUM is missing and this user cannot install it (not root, no sudo): apt-get install chromium" >&2; exit 1; }
  SUDO=sudo
fi
command -v apt-get >/dev/null || { echo "install_browser.sh: $CHROMIUM is missing and there is no apt-get: install Chromium so that $CHROMIUM runs" >&2; exit 1; }
echo "Installing Debian's chromium for the browser test ..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
[ -x "$CHROMIUM" ] || { echo "install_browser.sh: apt-get installed chromium but $CHROMIUM is still missing" >&2; exit 1; }
