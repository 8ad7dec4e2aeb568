#!/usr/bin/env bash
# ensure-node.sh makes sure Node.js and npm (Debian's packages) and the npm packages
# of the Node.js interoperability tests (test/interop/zongji, pinned by its
# package-lock.json) are installed. Idempotent: prints nothing and exits 0 when
# everything is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	SUDO=()
	if [[ $(id -u) -ne 0 ]]; then
		SUDO=(sudo)
	fi
	"${SUDO[@]}" apt-get update -qq >/dev/null
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
	echo "ensure-node: installed nodejs and npm ($(node --version))"
fi

dir=test/interop/zongji
if [[ ! -f $dir/node_modules/@vlasky/zongji/package.json || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
	if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
		echo "ensure-node: installed $dir's npm packages"
	elif [[ -n ${CI:-} ]]; then
		echo "ensure-node: npm ci in $dir failed (the npm registry is needed once)" >&2
		exit 1
	else
		# Outside CI the zongji test then skips, saying why.
		echo "ensure-node: npm ci in $dir failed (no npm registry?): the zongji test will skip" >&2
	fi
fi
