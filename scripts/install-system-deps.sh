#!/usr/bin/env bash
# Install the Debian packages that building and testing helpdesk-milter needs,
# only those missing.  Non-interactive; Postfix is preseeded to "No
# configuration" so no system instance is configured or started (the test
# suite runs its own private instance on 127.0.0.1).
set -euo pipefail

PACKAGES=(postfix libmilter-dev swaks dnsmasq-base openssl systemd gcc python3-dev)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
# python3-dev only matters for the system Python; a pyenv/venv Python ships its headers.
if [ ${#missing[@]} -eq 1 ] && [ "${missing[0]}" = python3-dev ] \
   && [ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  missing=()
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing Debian packages: ${missing[*]}" >&2
  echo "install-system-deps: run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install-system-deps: installing ${missing[*]}" >&2
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
