#!/usr/bin/env bash
# Install the Debian packages that building and testing helpdesk-milter needs,
# only those missing.  Non-interactive; Postfix is preseeded to "No
# configuration" so no system instance is configured or started (the test
# suite runs its own private instance on 127.0.0.1).
set -euo pipefail

# sasl2-bin: saslpasswd2, for the end-to-end test of authenticated submission (SMTP AUTH)
# systemd: systemd-analyze for the unit tests (no running systemd needed); python3-venv
# and man-db: the README's production install, followed by tests/test_readme_production.py
# redis-server: the tests of [state] backend = "redis" start their own private one
PACKAGES=(postfix libmilter-dev swaks dnsmasq-base openssl systemd gcc python3-dev sasl2-bin
          python3-venv man-db redis-server)

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
# The package starts a system Redis on 127.0.0.1:6379 where services may start.  The
# tests never use it (they run their own on a free port); leave none running that this
# script installed, so that nothing comes to depend on it by accident.
if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null \
   && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
