#!/usr/bin/env bash
# Local sandbox: a private MariaDB and a private Postfix instance on loopback ports under
# $SANDBOX_DIR (default /tmp/reconciler-sandbox), and a bare git repository there holding a copy of
# example-repo adapted to them (harness.repo.sandboxize_postfix_tree). It also writes an agent
# configuration (config.toml), the MySQL password file and the secrets dir, and creates the tables.
#
#   bash deploy/sandbox.sh                      # set up (again) and print what runs
#   .venv/bin/python -m harness status --dir /tmp/reconciler-sandbox
#   .venv/bin/python -m harness down --dir /tmp/reconciler-sandbox
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
.venv/bin/python -m harness up --dir "$SANDBOX_DIR" --repo "$REPO"

echo "==> guarding the bare repository with the pre-receive hook (docs/push-checks.md)"
bash deploy/install-pre-receive.sh "$(sed -n 's/^url = "\(.*\)"$/\1/p' "$SANDBOX_DIR/config.toml")" \
  "$ROOT/.venv/bin/reconciler" "$SANDBOX_DIR/config.toml"

echo "==> creating the tables"
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" init-db

echo "==> dry run of the branch head"
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" diff >"$SANDBOX_DIR/first-diff.txt" || true
grep -E '^(revision|postfix:)' "$SANDBOX_DIR/first-diff.txt" || true

echo "==> starting the agent (it applies the branch head, then watches the repository and the live state)"
if [ -f "$SANDBOX_DIR/agent.pid" ] && kill -0 "$(cat "$SANDBOX_DIR/agent.pid")" 2>/dev/null; then
  kill "$(cat "$SANDBOX_DIR/agent.pid")"
  while kill -0 "$(cat "$SANDBOX_DIR/agent.pid")" 2>/dev/null; do sleep 0.1; done
fi
setsid .venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" run >"$SANDBOX_DIR/agent.log" 2>&1 </dev/null &
echo $! >"$SANDBOX_DIR/agent.pid"
LISTEN="$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$SANDBOX_DIR/config.toml")"
STATUS_URL="http://$LISTEN/status"
for _ in $(seq 1 100); do
  if .venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" status >/dev/null 2>&1; then break; fi
  sleep 0.2
done
.venv/bin/reconciler --config "$SANDBOX_DIR/config.toml" status || {
  echo "sandbox: the agent is not synced yet; see $SANDBOX_DIR/agent.log" >&2
}
BARE="$(sed -n 's/^url = "\(.*\)"$/\1/p' "$SANDBOX_DIR/config.toml")"

cat <<EOT

Sandbox ready: private MariaDB and Postfix under $SANDBOX_DIR, agent running (pid $(cat "$SANDBOX_DIR/agent.pid")).
  page:     http://$LISTEN/          (the status page: open it in a browser, it follows pushes live)
  status:   $STATUS_URL     (also: .venv/bin/reconciler --config $SANDBOX_DIR/config.toml status)
  diff:     http://$LISTEN/diff      metrics: http://$LISTEN/metrics
  agent log: $SANDBOX_DIR/agent.log

Push a change and watch it go live:
  git clone -q $BARE /tmp/mail-config && cd /tmp/mail-config
  \$EDITOR domains/example.net.yaml          # add a mailbox
  git commit -qam "add a mailbox" && git push -q origin main
  curl -s $STATUS_URL
A push the agent would reject (a typo in postfix/main.cf, a plaintext password) is refused by the
repository's pre-receive hook, with each problem on the pusher's terminal.

Stop everything: kill \$(cat $SANDBOX_DIR/agent.pid); .venv/bin/python -m harness down --dir $SANDBOX_DIR
EOT
