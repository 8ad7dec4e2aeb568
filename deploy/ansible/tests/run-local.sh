#!/usr/bin/env bash
# Proves deploy/ansible on this machine: syntax checks and ansible-lint on every
# playbook, the argument_specs check, systemd-analyze on the rendered unit, then
# deploy_test.go (three nodes on loopback addresses with the script service manager,
# a real MariaDB master and replica, an upgrade from the commit in upgrade-from to the
# binary in $FLOTILLA_BIN, built by `make build` when unset).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ansible_dir=$(dirname "$here")
repo=$(cd "$ansible_dir/../.." && pwd)
cd "$ansible_dir"
export ANSIBLE_CONFIG=$ansible_dir/ansible.cfg ANSIBLE_NOCOLOR=1
for tool in ansible-playbook ansible-lint systemd-analyze; do
  command -v "$tool" >/dev/null || { echo "run-local.sh: $tool missing: scripts/ensure-ansible.sh installs it" >&2; exit 1; }
done
if [ -z "${FLOTILLA_BIN:-}" ]; then
  make -C "$repo" build >/dev/null
  FLOTILLA_BIN=$repo/bin/flotilla
fi
export FLOTILLA_BIN

echo "== syntax"
for p in playbooks/*.yml; do
  local_check=(ansible-playbook -i inventories/local-test --vault-password-file "$here/vault-password" --syntax-check "$p")
  FLOTILLA_DEPLOY_ROOT=/nonexistent "${local_check[@]}" >/dev/null 2>&1 || { echo "syntax check of $p failed:" >&2; FLOTILLA_DEPLOY_ROOT=/nonexistent "${local_check[@]}"; exit 1; }
  ansible-playbook -i inventories/example --syntax-check "$p" >/dev/null 2>&1 || { echo "syntax check of $p failed:" >&2; ansible-playbook -i inventories/example --syntax-check "$p"; exit 1; }
  echo "ok $p"
done
echo "== argument_specs"
python3 "$here/check-argument-specs.py"
echo "== ansible-lint (production profile)"
ansible-lint --offline --profile production -q playbooks/ roles/
echo "ok ansible-lint"
echo "== systemd unit"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ansible-playbook "$here/render-unit.yml" -e "unit_dest=$tmp/flotilla.service" -e "flotilla_bin_link=$FLOTILLA_BIN" >/dev/null
systemd-analyze verify "$tmp/flotilla.service"
echo "ok systemd-analyze verify"

echo "== deployment"
cd "$here"
go test -tags deploy -count=1 -timeout 25m -v ./ 2>&1
