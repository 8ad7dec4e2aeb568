package server

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/hugepage"
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

// childOutput runs test in a child of the test binary (under the race detector, a
// build of this package without it: the detector's shadow memory faults in pages of
// its own whatever the heap does) with FLOTILLA_PRETOUCH_CHILD=mode and the given
// GODEBUG, and returns what it printed.
func childOutput(t *testing.T, test, mode, godebug string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^"+test+"$", "-test.v", "-test.count=1")
	if raceDetector {
		goBin, err := exec.LookPath("go")
		if err != nil {
			t.Fatalf("the race detector's shadow memory takes faults of its own: this test needs go to build itself without it: %v", err)
		}
		cmd = exec.CommandContext(ctx, goBin, "test", "-count=1", "-v", "-run", "^"+test+"$", ".")
	}
	// GOFLAGS= keeps -race out of the child; GODEBUG is replaced, not appended (of two
	// entries a process reads the first).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, "GOFLAGS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "FLOTILLA_PRETOUCH_CHILD="+mode, "GODEBUG="+godebug, "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child (%s): %v\n%s", mode, err, out)
	}
	return string(out)
}

// childValue is the number a child printed after name=.
func childValue(t *testing.T, out, name string) int64 {
	t.Helper()
	_, after, ok := strings.Cut(out, name+"=")
	if !ok {
		t.Fatalf("the child reported no %s:\n%s", name, out)
	}
	n, err := strconv.ParseInt(strings.Fields(after)[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPretouchedHeapTakesNoFaults: after pretouch, the heap a burst allocates is
// memory the process already has. (It does not wait for the runtime to give the
// pages back, so it tests the pretouch, not madvdontneed.) It runs in a child
// process started with the GODEBUG the serve command runs with (see cmd/flotilla's
// returnMemoryLazily) and, for the control, without pretouching. disablethp=1 keeps
// the heap in 4 KiB pages (which pretouch respects), so every fault counts one page.
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
		return childValue(t, childOutput(t, "TestPretouchedHeapTakesNoFaults", mode, "madvdontneed=0,disablethp=1"), "faults")
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

// TestPretouchUsesHugePages: where the kernel allows transparent huge pages (its
// setting is madvise or always), most of a pretouch lands in them, unless the kernel
// could not find huge pages (its fallback count rose: fragmented or scarce memory);
// where it says never, none does; and where the runtime is told disablethp=1, none
// does either. Each case runs in a fresh child, whose heap holds nothing faulted in
// before.
func TestPretouchUsesHugePages(t *testing.T) {
	const size = 64 << 20
	if mode := os.Getenv("FLOTILLA_PRETOUCH_CHILD"); mode != "" {
		r := pretouch(size)
		t.Logf("huge=%d thp_alloc=%d thp_fallback=%d advise_err=%v", r.huge, r.thpAlloc, r.thpFallback, r.adviseErr)
		return
	}
	mode := hugepage.Mode()
	if mode == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("cannot read the kernel's transparent huge page setting (/sys/kernel/mm/transparent_hugepage/enabled): CI runs on Linux with it")
		}
		t.Skip("this kernel has no transparent huge pages: nothing to advise")
	}
	out := childOutput(t, "TestPretouchUsesHugePages", "huge", "madvdontneed=0")
	huge, fallback := childValue(t, out, "huge"), childValue(t, out, "thp_fallback")
	t.Logf("transparent_hugepage %q: %d MiB of a %d MiB pretouch in huge pages (%d faults fell back to small pages)", mode, huge>>20, size>>20, fallback)
	switch mode {
	case "madvise", "always":
		if huge < size/2 && fallback == 0 {
			t.Fatalf("transparent huge pages are %q, yet only %d of %d pretouched bytes are in them, and the kernel fell back on no fault:\n%s", mode, huge, size, out)
		}
	case "never":
		if huge != 0 {
			t.Fatalf("transparent huge pages are never, yet %d bytes are in them", huge)
		}
	}
	if mode == "madvise" {
		if off := childValue(t, childOutput(t, "TestPretouchUsesHugePages", "huge", "madvdontneed=0,disablethp=1"), "huge"); off != 0 {
			t.Fatalf("with GODEBUG=disablethp=1, %d pretouched bytes are in huge pages", off)
		}
	}
}

// TestPretouchIsBounded: a pretouch takes at most an eighth of the memory the node may
// use, and as configured when that is unknown.
func TestPretouchIsBounded(t *testing.T) {
	for _, c := range []struct {
		asked     Size
		available uint64
		want      Size
	}{
		{256 << 20, 16 << 30, 256 << 20},
		{256 << 20, 1 << 30, 128 << 20},
		{256 << 20, 0, 256 << 20},
	} {
		if got := boundPretouch(c.asked, c.available); got != c.want {
			t.Errorf("boundPretouch(%d, %d) = %d, want %d", c.asked, c.available, got, c.want)
		}
	}
	if availableMemory() == 0 {
		t.Error("neither /proc/meminfo nor the cgroup's memory.max gave the memory this process may use")
	}
}
