#!/usr/bin/env bash
# Local sandbox: a private MariaDB and a private Postfix instance on loopback ports under
# $SANDBOX_DIR (default /tmp/reconciler-sandbox), and a bare git repository there holding a copy of
# example-repo adapted to them (reconciler.sandbox.sandboxize_postfix_tree). It also writes an agent
# configuration (config.toml), the MySQL password file and the secrets dir, and creates the tables.
#
#   bash deploy/sandbox.sh                      # set up (again) and print what runs
#   .venv/bin/python -m reconciler.sandbox status --dir /tmp/reconciler-sandbox
#   .venv/bin/python -m reconciler.sandbox down --dir /tmp/reconciler-sandbox
#
# Needs root (Postfix's master runs as root). Nothing listens beyond 127.0.0.1 and the sandboxed
# Postfix never delivers mail off this host (outbound mail waits in its queue).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SANDBOX_DIR="${SANDBOX_DIR:-/tmp/reconciler-sandbox}"
REPO="${SANDBOX_REPO:-example-repo}"

bash deploy/install-deps.sh

echo "==> validating $REPO"
.venv/bin/reconciler validate --repo "$REPO"

echo "==> starting the sandbox in $SANDBOX_DIR"
.venv/bin/python -m reconciler.sandbox up --dir "$SANDBOX_DIR" --repo "$REPO"

echo "==> creating the tables"
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" init-db

echo "==> dry run, then apply of the branch head"
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" diff >/dev/null || true
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" apply

cat <<EOT

Sandbox ready. Try:
  .venv/bin/reconciler --config $SANDBOX_DIR/config.toml diff
  .venv/bin/python -m reconciler.sandbox status --dir $SANDBOX_DIR
  .venv/bin/python -m reconciler.sandbox down --dir $SANDBOX_DIR
EOT
