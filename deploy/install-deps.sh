#!/usr/bin/env bash
# Install everything the project needs on Debian 12, idempotently: Postfix (+ MySQL maps), MariaDB
# server and client, the tools the agent and its tests call, the Python virtualenv in .venv and
# import-linter in .venv-lint (pyproject.toml's "lint" extra, apart: see there).
#
# Called by deploy/test.sh (CI) and deploy/sandbox.sh. Tests and the sandbox run PRIVATE Postfix and
# MariaDB instances (harness/), so the packages' own services are never needed: Postfix
# is preseeded to "No configuration" (no /etc/postfix/main.cf is written) and, where no
# policy-rc.d exists, the packages are kept from starting their daemons while installing.
# INSTALL_DEPS_FORCE_APT=1 runs apt-get even when every package is installed already.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PACKAGES=(
  postfix postfix-mysql mariadb-server mariadb-client
  openssl git openssh-client gnupg ca-certificates python3-venv
  chromium chromium-driver  # the status page's browser tests (tests/test_page_browser.py)
  galera-4 rsync  # the fleet tests' three-node Galera cluster (rsync state transfer)
  systemd  # systemd-analyze verify/security of deploy/reconciler.service (tests/test_unit_file.py)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ] \
      || [ -n "${INSTALL_DEPS_FORCE_APT:-}" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root to install Debian packages" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A mirror hiccup should not fail a CI run: three tries, a few seconds apart.
  retry() {
    local n
    for n in 1 2 3; do
      "$@" && return 0
      echo "install-deps: attempt $n of '$*' failed" >&2
      sleep $((n * 5))
    done
    return 1
  }
  retry apt-get update -q
  # Postfix: no configuration at all (tests and the sandbox write their own main.cf per instance).
  debconf-set-selections <<'DEBCONF'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string sandbox.test
DEBCONF
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Exit status 101 = "action forbidden": invoke-rc.d then starts no service during the install.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  status=0
  retry apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}" || status=$?
  if [ -n "$created_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ "$status" -ne 0 ]; then
    echo "install-deps: apt-get install failed ($status)" >&2
    exit "$status"
  fi
else
  echo "install-deps: Debian packages already installed"
fi

# The Python environment: rebuilt when missing or broken, reinstalled when pyproject.toml changed.
stamp=".venv/.install-deps-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(python3 --version 2>&1)"
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$want" ]; then
  rm -rf .venv  # pyproject.toml changed: built anew, so that nothing it no longer asks for stays behind
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
    || ! .venv/bin/python -c 'import reconciler, pytest, mypy' >/dev/null 2>&1; then
  echo "install-deps: installing the project into .venv"
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
else
  echo "install-deps: .venv is up to date"
fi

# import-linter apart (pyproject.toml's "lint" extra): it reads the sources, it needs none of the
# project's packages. Run as deploy/test.sh does: PYTHONPATH=. .venv-lint/bin/lint-imports.
lint_stamp=".venv-lint/.install-deps-stamp"
if ! .venv-lint/bin/python -c 'import importlinter' >/dev/null 2>&1 || [ ! -f "$lint_stamp" ] \
    || [ "$(cat "$lint_stamp")" != "$want" ]; then
  echo "install-deps: installing import-linter into .venv-lint"
  rm -rf .venv-lint
  python3 -m venv .venv-lint
  mapfile -t lint_requirements < <(.venv/bin/python -c \
    'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["lint"], sep="\n")')
  .venv-lint/bin/python -m pip install -q "${lint_requirements[@]}"
  echo "$want" > "$lint_stamp"
fi
