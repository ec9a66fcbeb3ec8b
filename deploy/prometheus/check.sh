#!/usr/bin/env bash
# Checks deploy/prometheus/rules.yml with the real tools (run by tests/run.sh):
# `promtool check rules`, `promtool test rules` on rules_test.yml, and that every
# alert has a unit test and a runbook paragraph in deploy/README.md.
set -euo pipefail
dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$dir"

command -v promtool >/dev/null 2>&1 || {
  echo "check.sh: promtool not found (Debian package prometheus; deploy/local/setup.sh installs it)" >&2
  exit 1
}
promtool check rules rules.yml
promtool test rules rules_test.yml

missing=0
for alert in $(sed -n 's/^ *- alert: *//p' rules.yml); do
  if ! grep -q "alertname: $alert\$" rules_test.yml; then
    echo "check.sh: alert $alert has no case in rules_test.yml" >&2
    missing=1
  fi
  anchor=$(printf '%s' "$alert" | tr '[:upper:]' '[:lower:]')
  if ! grep -q "^#### \`$alert\`" ../README.md; then
    echo "check.sh: alert $alert has no runbook paragraph (#### \`$alert\`) in deploy/README.md" >&2
    missing=1
  fi
  if ! grep -q "runbook: deploy/README.md#$anchor\$" rules.yml; then
    echo "check.sh: alert $alert does not link its runbook (deploy/README.md#$anchor)" >&2
    missing=1
  fi
done
exit "$missing"
