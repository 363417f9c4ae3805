#!/usr/bin/env bash
# What the test suite needs beyond PyPI, from Debian's packages. Usage:
#   scripts/setup-test-deps.sh [PART ...]     (no PART: chromium)
# PART is one of: chromium (tests/browser and load runs with browser probes; playwright
# drives Debian's package, playwright's own browser download is not used), redis
# (redis-server: the cluster), postgres (PostgreSQL: the cluster's shared store),
# janus (Janus gateway: the Janus target driver). For each PART it prints
# "PART: /path/to/executable". Idempotent: installs only what is missing. The fixtures
# and commands that need a part run this script (spacesim/deps.py), so a fresh machine
# passes the README's test command.
set -euo pipefail

# part -> "package executable [executable ...]" (the first executable found is printed)
declare -A PACKAGE=(
    [chromium]=chromium
    [redis]=redis-server
    [postgres]=postgresql
    [janus]=janus
)
declare -A EXECUTABLES=(
    [chromium]="${SPACESIM_CHROMIUM:-} /usr/bin/chromium /usr/bin/chromium-browser"
    [redis]="/usr/bin/redis-server"
    [postgres]="$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)"
    [janus]="/usr/bin/janus"
)

find_part() {
    local candidate
    for candidate in ${EXECUTABLES[$1]}; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

parts=("$@")
[ "${#parts[@]}" -eq 0 ] && parts=(chromium)
missing=()
for part in "${parts[@]}"; do
    if [ -z "${PACKAGE[$part]+x}" ]; then
        echo "unknown part '$part' (known: ${!PACKAGE[*]})" >&2
        exit 2
    fi
    if path=$(find_part "$part"); then
        echo "$part: $path"
    else
        missing+=("$part")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "missing ${missing[*]} and no apt-get: install the packages" \
        "(${missing[*]/#/}) yourself (for Chromium, or set SPACESIM_CHROMIUM)" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "missing ${missing[*]}; run as root: apt-get install -y" \
            "$(for p in "${missing[@]}"; do printf '%s ' "${PACKAGE[$p]}"; done)" >&2
        exit 1
    fi
    sudo="sudo -n"
fi
packages=()
for part in "${missing[@]}"; do packages+=("${PACKAGE[$part]}"); done
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${packages[@]}"
# re-read paths that depend on what is installed (postgres's versioned directory)
EXECUTABLES[postgres]="$(ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)"
for part in "${missing[@]}"; do
    if path=$(find_part "$part"); then
        echo "$part: $path"
    else
        echo "$part: apt-get installed ${PACKAGE[$part]} but its executable is not there" >&2
        exit 1
    fi
done
