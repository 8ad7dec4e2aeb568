package node

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// minorFaults is how many pages this process has faulted in so far.
func minorFaults(t *testing.T) int64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

// touchHeap allocates n bytes in proposal-sized buffers and writes every page, as an
// ingest does, and returns how many pages that faulted in.
func touchHeap(t *testing.T, n int) int64 {
	t.Helper()
	before := minorFaults(t)
	var keep [][]byte
	for ; n > 0; n -= 4 << 20 {
		b := make([]byte, 4<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	faults := minorFaults(t) - before
	runtime.KeepAlive(keep)
	return faults
}

// TestPretouchedHeapTakesNoFaults: after pretouch, the heap a burst allocates is
// memory the process already has. It runs in a child of the test binary, started
// with the GODEBUG the serve command runs with (see cmd/flotilla's
// returnMemoryLazily) and, for the control, without pretouching; under the race
// detector, from a build without it.
func TestPretouchedHeapTakesNoFaults(t *testing.T) {
	const size = 64 << 20
	pages := int64(size / 4096)
	if mode := os.Getenv("FLOTILLA_PRETOUCH_CHILD"); mode != "" {
		if mode == "on" {
			pretouch(size)
		}
		t.Logf("faults=%d", touchHeap(t, size))
		return
	}
	run := func(mode string) int64 {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestPretouchedHeapTakesNoFaults$", "-test.v", "-test.count=1")
		if raceDetector {
			// The detector's shadow memory faults in pages of its own whatever the
			// heap does: the child is this package's tests built without it.
			cmd = exec.Command("go", "test", "-count=1", "-v", "-run", "^TestPretouchedHeapTakesNoFaults$", ".")
		}
		cmd.Env = append(os.Environ(), "FLOTILLA_PRETOUCH_CHILD="+mode, "GODEBUG=madvdontneed=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child (%s): %v\n%s", mode, err, out)
		}
		_, after, ok := strings.Cut(string(out), "faults=")
		if !ok {
			t.Fatalf("child (%s) reported no faults:\n%s", mode, out)
		}
		n, err := strconv.ParseInt(strings.Fields(after)[0], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cold, warm := run("off"), run("on")
	t.Logf("allocating and touching %d MiB: %d page faults cold, %d after pretouch", size>>20, cold, warm)
	if cold < pages/2 {
		t.Fatalf("the control faulted in only %d of %d pages: the measurement cannot tell", cold, pages)
	}
	if warm > pages/10 {
		t.Fatalf("after pretouching %d MiB, touching as much again faulted in %d of %d pages", size>>20, warm, pages)
	}
}
