#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run): dependencies, then lint, types, layer contract, tests.
# Every step runs even after an earlier one failed, so one run shows every problem; the exit status
# is non-zero when any step failed. Postfix and MariaDB are started by the tests themselves
# (private instances on loopback, see harness/): no system service is needed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash deploy/install-deps.sh || { echo "test.sh: install-deps.sh failed" >&2; exit 1; }

export PATH="$ROOT/.venv/bin:$PATH:/usr/sbin:/sbin"
failed=()

step() {
  local name="$1"
  shift
  echo
  echo "==> $name: $*"
  local start=$SECONDS
  if "$@"; then
    echo "==> $name: ok ($((SECONDS - start)) s)"
  else
    echo "==> $name: FAILED (exit $?, $((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

step ruff ruff check .
step mypy mypy
step import-linter env PYTHONPATH="$ROOT" "$ROOT/.venv-lint/bin/lint-imports"
# Two workers, each taking whole test files (their module fixtures set up once): on 2 cores the suite
# takes about 7.5 minutes instead of 13, most of it waiting on Postfix, MariaDB and Galera.
step pytest pytest -n 2 --dist loadfile

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "test.sh: all checks passed"
