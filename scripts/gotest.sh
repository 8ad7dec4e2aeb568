#!/usr/bin/env bash
# Runs go test verbosely, keeps the full log, and ends with a one-line summary:
# "N passed, N failed, N skipped" and the wall time. Unit tests (every package outside
# test/) run with the race detector; the end-to-end tests drive separate processes
# and run without it.
set -uo pipefail
start=$(date +%s)
log=$(mktemp -t flotilla-test.XXXXXX)
unit=$(go list "$@" | grep -v '/test/' || true)
e2e=$(go list "$@" | grep '/test/' | grep -v '/test/chaos$' || true)
chaos=$(go list "$@" | grep '/test/chaos$' || true)
filter() { grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic|WARNING: DATA RACE|\s+[a-z_]+\.go:[0-9]+:)|E2E|DEPLOY|CHAOS' | grep -v '^=== RUN'; }
rc=0
# Two phases overlap two suites each, for the 2 cores the suite is budgeted on were
# half idle one suite at a time (22 min of CPU in 20.7 min of wall): the unit tests
# beside the short fault-injection suite, then the end-to-end tests beside the Ansible
# deployment (which runs one host's tasks at a time; the end-to-end tests, alone, use
# 44% of 2 cores waiting on servers, timers and fsyncs). The fault-injection suite
# ends before the end-to-end tests start: they write gigabytes to the disk its
# disk-full fault measures. A side suite writes to its own log, appended when it ends.
sidelogs=()
sidepids=()
times=$(mktemp -t flotilla-times.XXXXXX)
# Interrupted (INT or TERM, acted on once the go test in the foreground returns), the
# script takes its process group down: the side suites, and make and whatever started
# it in that group. At any exit the side logs not yet collected join the full log (a
# collected one is emptied), and the temporary files go.
trap '[ ${#sidelogs[@]} -eq 0 ] || cat "${sidelogs[@]}" >>"$log" 2>/dev/null; rm -f "$times" "${sidelogs[@]}"' EXIT
trap 'trap - INT TERM; kill 0' INT TERM
phase() { echo "$1 took $(( $(date +%s) - $2 ))s" >>"$times"; }
side() { # side NAME COMMAND...: runs COMMAND in the background into its own log
  local name=$1 f t0
  f=$(mktemp -t "flotilla-$name.XXXXXX")
  t0=$(date +%s)
  shift
  { "$@"; r=$?; echo "$name took $(( $(date +%s) - t0 ))s" >>"$times"; exit $r; } >"$f" 2>&1 &
  sidepids+=($!)
  sidelogs+=("$f")
}
# collect I: waits for side suite I, appends its log and counts its failure.
collect() {
  wait "${sidepids[$1]}" || rc=1
  tee -a "$log" <"${sidelogs[$1]}" | filter
  : >"${sidelogs[$1]}"
}
if [ -n "$chaos" ]; then
  side chaos go test -count=1 -timeout 15m -v $chaos
fi
if [ -n "$unit" ]; then
  t0=$(date +%s)
  go test -race -count=1 -timeout 25m -v $unit 2>&1 | tee "$log" | filter
  rc=${PIPESTATUS[0]}
  phase unit "$t0"
fi
# The Ansible deployment (deploy/ansible/tests, build tag deploy) when the whole tree
# is tested.
if [ "$*" = "./..." ]; then
  side deploy deploy/ansible/tests/run-local.sh
fi
if [ -n "$chaos" ]; then
  collect 0
fi
t0=$(date +%s)
if [ -n "$e2e" ]; then
  go test -count=1 -timeout 25m -v $e2e 2>&1 | tee -a "$log" | filter
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
fi
# Interoperability modules (test/interop/*/go.mod: a client library's dependencies,
# Vitess's for one, stay out of Flotilla's go.mod) run with the whole suite.
if [ "$*" = "./..." ]; then
  for mod in test/interop/*/go.mod; do
    [ -f "$mod" ] || continue
    (cd "$(dirname "$mod")" && go test -count=1 -timeout 10m -v ./...) 2>&1 | tee -a "$log" | filter
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
  done
fi
phase "end-to-end and interop" "$t0"
for i in "${!sidepids[@]}"; do
  if [ -z "$chaos" ] || [ "$i" -ne 0 ]; then
    collect "$i"
  fi
done
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
skipped=$(grep -cE '^\s*--- SKIP' "$log")
echo
echo "full log: $log"
sed 's/^/  /' "$times"
echo "tests took $(( $(date +%s) - start ))s"
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "go test exited with status $rc (build error or panic; see the log above)" >&2
fi
exit "$rc"
