#!/bin/sh
# System packages the tests need: Debian's chromium for the report's browser test.
# Does nothing when /usr/bin/chromium is already there; installing needs root (as in CI).
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system.sh: /usr/bin/chromium is missing and installing it needs root;" \
         "the browser test will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
