#!/usr/bin/env bash
# Runs go test verbosely, keeps the full log, and ends with a one-line summary:
# "N passed, N failed, N skipped" and the wall time.
set -uo pipefail
start=$(date +%s)
log=$(mktemp -t flotilla-test.XXXXXX)
go test -count=1 -timeout 25m -v "$@" 2>&1 | tee "$log" | grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic|\s+[a-z_]+\.go:[0-9]+:)|E2E' | grep -v '^=== RUN'
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
skipped=$(grep -cE '^\s*--- SKIP' "$log")
echo
echo "full log: $log"
echo "tests took $(( $(date +%s) - start ))s"
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "go test exited with status $rc (build error or panic; see the log above)" >&2
fi
exit "$rc"
