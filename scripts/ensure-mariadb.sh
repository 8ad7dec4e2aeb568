#!/usr/bin/env bash
# ensure-mariadb.sh makes sure the MariaDB binaries used by Flotilla's
# end-to-end tests (test/mariadbtest) are installed. Tests start their own
# throwaway servers, so any service the package starts is stopped again.
# Idempotent: prints nothing and exits 0 when everything is already present.
set -euo pipefail

tools=(mariadbd mariadb-install-db mariadb-binlog mariadb)
missing=()
for t in "${tools[@]}"; do
	# mariadbd lives in /usr/sbin, which is not always on a non-root PATH.
	if ! command -v "$t" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$t" ]]; then
		missing+=("$t")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
	SUDO=(sudo)
fi

"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
# The package may have started a system server; tests run their own.
"${SUDO[@]}" service mariadb stop >/dev/null 2>&1 || true

echo "ensure-mariadb: installed mariadb-server and mariadb-client (was missing: ${missing[*]})"
