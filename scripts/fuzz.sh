#!/usr/bin/env bash
# Runs every fuzz target in the module with -fuzz for FUZZTIME each (default 30s) and
# prints the executions per target. A crasher makes go test fail and is written to the
# package's testdata/fuzz/<Target>/: commit it, it is a seed from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
# Each new interesting input is minimized for up to -fuzzminimizetime (Go's default:
# 60s), and a worker minimizing runs nothing else: in a short run that took the whole
# time of some targets. Crashers are still minimized, within this bound.
minimize=${FUZZMINIMIZETIME:-1s}
status=0
summary=()
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' || true)
  for t in $targets; do
    echo "== $pkg $t ($fuzztime)"
    log=$(mktemp -t flotilla-fuzz.XXXXXX)
    if go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "$pkg" >"$log" 2>&1; then
      res=ok
    else
      res=FAILED
      status=1
      cat "$log"
    fi
    execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
    summary+=("$res ${pkg#github.com/flotilla-relay/flotilla/} $t execs=${execs:-?}")
    rm -f "$log"
  done
done
echo
printf '%s\n' "${summary[@]}"
exit $status
