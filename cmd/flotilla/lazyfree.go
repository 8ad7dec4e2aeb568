package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// lazyFreeGuard marks the process serve re-executed (see returnMemoryLazily), so that
// it never executes itself again, whatever its environment holds.
const lazyFreeGuard = "FLOTILLA_LAZYFREE_EXEC"

// returnMemoryLazily re-executes the node with GODEBUG=madvdontneed=0 added unless
// GODEBUG sets madvdontneed already; it returns only if it did not, with the reason
// when that was a failure. The Go runtime then gives memory back to the kernel with
// MADV_FREE rather than MADV_DONTNEED: the pages stay the process's until the kernel
// needs them, so the next burst after a quiet spell reuses them without faulting them
// in again, which on a VM costs more than the copy that touches each page (see
// server.DefaultMemoryPretouch). The runtime reads the setting once, as it starts:
// hence the exec, at once, with the same arguments and process id, of the path the
// node was started by (so ps and pgrep still know it by its name; /proc/self/exe
// would rename it "exe", and the resolved path names the versioned file a symlink
// points to).
func returnMemoryLazily() string {
	if os.Getenv(lazyFreeGuard) != "" {
		os.Unsetenv(lazyFreeGuard)
		return ""
	}
	env, ok := lazyFreeEnv(os.Environ())
	if !ok {
		return ""
	}
	path, err := selfPath()
	if err != nil {
		return fmt.Sprintf("cannot find the running binary to execute again: %v", err)
	}
	err = syscall.Exec(path, os.Args, env) // returns only on failure
	return fmt.Sprintf("executing %s again with GODEBUG=madvdontneed=0 failed: %v", path, err)
}

// lazyFreeEnv returns env with madvdontneed=0 added to GODEBUG and the guard set, and
// false when GODEBUG sets madvdontneed already (an operator's choice) or the guard is
// set. Only one GODEBUG is left: the runtime reads the first of several, so a second
// one appended would go unread and the node would execute itself forever.
func lazyFreeEnv(env []string) ([]string, bool) {
	godebug, seen := "", false
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case lazyFreeGuard:
			return nil, false
		case "GODEBUG":
			if !seen {
				godebug, seen = v, true
			}
		default:
			out = append(out, kv)
		}
	}
	for _, f := range strings.Split(godebug, ",") {
		if strings.HasPrefix(strings.TrimSpace(f), "madvdontneed=") {
			return nil, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+"madvdontneed=0", lazyFreeGuard+"=1"), true
}

// selfPath is the path the running binary was started by (os.Args[0], looked up in
// PATH if it has no slash) when that is still the running binary, else the binary's
// resolved path.
func selfPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	arg0 := os.Args[0]
	if !strings.Contains(arg0, "/") {
		if arg0, err = exec.LookPath(arg0); err != nil {
			return exe, nil
		}
	}
	a, errA := os.Stat(arg0)
	b, errB := os.Stat(exe)
	if errA == nil && errB == nil && os.SameFile(a, b) {
		return arg0, nil
	}
	return exe, nil
}
