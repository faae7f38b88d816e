#!/usr/bin/env bash
# Makes sure Debian's Chromium and its ChromeDriver are installed, for the web UI's
# end-to-end test (web/tests/ui_browser.rs). Idempotent. Prints the environment the
# test needs: eval "$(scripts/browser.sh)".
set -euo pipefail

log() { echo "browser: $*" >&2; }

if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  log "installing chromium and chromium-driver (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
fi
/usr/bin/chromium --version >&2
echo "export SLUICE_CHROMIUM=/usr/bin/chromium"
echo "export SLUICE_CHROMEDRIVER=/usr/bin/chromedriver"
