#!/usr/bin/env bash
# ensure-ansible.sh makes sure Debian's ansible-core, ansible-lint and systemd-analyze
# (package systemd; PID 1 need not be systemd) are installed for the deployment test
# (deploy/ansible/tests/run-local.sh). Idempotent: prints nothing when they are.
set -euo pipefail
missing=()
command -v ansible-playbook >/dev/null 2>&1 || missing+=(ansible-core)
command -v ansible-lint >/dev/null 2>&1 || missing+=(ansible-lint)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[[ ${#missing[@]} -eq 0 ]] && exit 0
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
	SUDO=(sudo)
fi
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "ensure-ansible: installed ${missing[*]} ($(ansible-playbook --version | head -1))"
