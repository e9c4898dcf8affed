#!/usr/bin/env bash
# Chromium and ChromeDriver for the browser test (tests/test_serve_browser.py), from
# Debian's packages, when they are missing. Needs root or password-less sudo.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "error: the browser test needs Chromium: run 'sudo apt-get install chromium chromium-driver'" >&2
    exit 1
  fi
fi
echo "==> installing chromium and chromium-driver (apt)"
# apt's download sandbox user cannot always run gpgv in containers; as root it can.
$SUDO apt-get -o APT::Sandbox::User=root update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o APT::Sandbox::User=root install -y -qq --no-install-recommends \
  chromium chromium-driver >/dev/null
