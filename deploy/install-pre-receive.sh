#!/usr/bin/env bash
# Installs deploy/pre-receive.example as the pre-receive hook of a bare repository.
#   bash deploy/install-pre-receive.sh /srv/git/mail-config.git [RECONCILER [CONFIG]]
# RECONCILER: the command (default: reconciler on PATH); CONFIG: the agent configuration the hook
# reads (default /etc/reconciler/config.toml).
# An existing pre-receive hook that is not ours is kept as hooks/pre-receive.orig and not run.
set -euo pipefail
repo="${1:?usage: install-pre-receive.sh BARE_REPO [RECONCILER]}"
reconciler="${2:-$(command -v reconciler || true)}"
config="${3:-/etc/reconciler/config.toml}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -f "$repo/HEAD" ] && [ -d "$repo/objects" ] || { echo "$repo: not a bare git repository" >&2; exit 2; }
[ -n "$reconciler" ] || { echo "reconciler not found on PATH; pass its path as the second argument" >&2; exit 2; }
hook="$repo/hooks/pre-receive"
mkdir -p "$repo/hooks"
if [ -e "$hook" ] && ! grep -q "reconciler" "$hook"; then
    mv "$hook" "$hook.orig"
    echo "kept the previous hook as $hook.orig" >&2
fi
sed -e "s|\${RECONCILER:-reconciler}|\${RECONCILER:-$reconciler}|" \
    -e "s|\${RECONCILER_CONFIG:-/etc/reconciler/config.toml}|\${RECONCILER_CONFIG:-$config}|" \
    "$here/pre-receive.example" >"$hook.tmp"
chmod 0755 "$hook.tmp"
mv "$hook.tmp" "$hook"
echo "installed $hook (runs $reconciler pre-receive with $config)"
