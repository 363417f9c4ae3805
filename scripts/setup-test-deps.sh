#!/usr/bin/env bash
# What the test suite needs beyond PyPI: Chromium for tests/browser and for load runs
# with browser probes (playwright drives Debian's package; playwright's own browser
# download is not used). Idempotent: does nothing when a Chromium is already there.
# tests/browser/conftest.py runs it, and so does `spacesim load` when a scenario sets
# load.browser_probes (spacesim/load/browser.py).
set -euo pipefail

for candidate in "${SPACESIM_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        echo "chromium: $candidate"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null; then
    echo "no Chromium and no apt-get: install Chromium and set SPACESIM_CHROMIUM to its path" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "Chromium is missing; run as root: apt-get install -y chromium" >&2
        exit 1
    fi
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium
echo "chromium: /usr/bin/chromium"
