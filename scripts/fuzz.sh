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
# count prints how many inputs a corpus directory holds (0 if it does not exist).
count() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' || true)
  for t in $targets; do
    echo "== $pkg $t ($fuzztime)"
    log=$(mktemp -t flotilla-fuzz.XXXXXX)
    corpus="$dir/testdata/fuzz/$t"
    before=$(count "$corpus")
    if go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "$pkg" >"$log" 2>&1; then
      res=ok
    elif grep -q 'context deadline exceeded' "$log" && [ "$(count "$corpus")" -eq "$before" ]; then
      # Go's fuzz coordinator can report its own -fuzztime deadline as a failure, with
      # no failing input (go.dev/issue/75804, fixed in Go 1.27). A real crasher is
      # always written to testdata/fuzz: without one, this is that race, not a bug.
      res="ok (go.dev/issue/75804: the deadline reported as a failure, no failing input)"
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
