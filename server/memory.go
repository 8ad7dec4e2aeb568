package server

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/internal/hugepage"
)

// DefaultMemoryPretouch is how much heap a node faults in at start (memory_pretouch):
// about what one group's bulk ingest keeps in use, with the collector's headroom.
const DefaultMemoryPretouch = 256 << 20

// pretouchShare bounds the pretouch to this fraction of the memory the node may use
// (the machine's, or its cgroup's limit): a small container must not be filled, or
// killed, by memory it may never need.
const pretouchShare = 8

// pretouched is what a pretouch did: how long it took, how much of the heap went into
// transparent huge pages (and how many of its faults the kernel served with a huge
// page, or fell back to small ones for), the kernel's settings, and why the advice
// failed if it did.
type pretouched struct {
	took                  time.Duration
	huge                  uint64
	thpAlloc, thpFallback uint64
	hugeMode, hugeDefrag  string
	adviseErr             error
}

// pretouch faults in n bytes of heap and hands them back to the runtime, as the JVM's
// AlwaysPreTouch does, so the first burst of work does not stall on fresh pages. A
// page touched for the first time costs a fault: about 14 µs each on the VMs this is
// measured on (a quarter of a cold node's ingest went to them), against copying that
// page in well under a microsecond. The pages stay the process's after the
// collector frees them because serve runs with GODEBUG=madvdontneed=0 (see
// cmd/flotilla's returnMemoryLazily): the kernel reclaims them only when it needs
// memory. A page the runtime gave back that way still traps once when written again
// (7.5 µs on the same VMs), so the range is first advised as transparent huge pages
// (see package hugepage, which says when it gives none; memory_pretouch 0 avoids
// it): faulting in 256 MiB took 0.8 s in 4 KiB pages and 0.02-0.13 s in huge ones,
// and allocating and filling 192 MiB of given-back heap 0.38-0.45 s against
// 0.10-0.11 s.
func pretouch(n Size) pretouched {
	start := time.Now()
	const chunk = 4 << 20 // the size of a proposal's buffers
	keep := make([][]byte, 0, int(n/chunk)+1)
	for left := int64(n); left > 0; left -= chunk {
		// Fresh from the OS: the runtime does not clear it, so nothing is touched yet.
		keep = append(keep, make([]byte, min(left, chunk)))
	}
	r := pretouched{hugeMode: hugepage.Mode(), hugeDefrag: hugepage.Defrag()}
	r.adviseErr = hugepage.NewAdvisor().Advise(keep...)
	huge0 := anonHugeBytes()
	alloc0, fallback0 := thpFaults()
	for _, b := range keep {
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
	}
	if h := anonHugeBytes(); h > huge0 {
		r.huge = h - huge0
	}
	alloc, fallback := thpFaults()
	r.thpAlloc, r.thpFallback = alloc-alloc0, fallback-fallback0
	runtime.KeepAlive(keep)
	runtime.GC() // the pages are free heap now, at hand for the next allocations
	r.took = time.Since(start)
	return r
}

// boundPretouch returns n, or a pretouchShare of available when n is more; available
// 0 means unknown.
func boundPretouch(n Size, available uint64) Size {
	if available > 0 && uint64(n) > available/pretouchShare {
		return Size(available / pretouchShare)
	}
	return n
}

// availableMemory is the memory this process may use: the machine's (MemTotal), or
// less, its cgroup v2 limit (memory.max); 0 when neither can be read.
func availableMemory() uint64 {
	total := kbField("/proc/meminfo", "MemTotal:")
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if lim, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && (total == 0 || lim < total) {
			total = lim
		}
	}
	return total
}

// kbField reads the line of a /proc file that starts with key ("MemTotal:") and
// returns its value, given in kB there, in bytes (0 when there is none).
func kbField(path, key string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// pretouchNote describes a pretouch for the log.
func pretouchNote(asked, done Size) string {
	if asked == done {
		return "as configured"
	}
	return fmt.Sprintf("memory_pretouch %d bounded to an eighth of the %d bytes this node may use", uint64(asked), uint64(done)*pretouchShare)
}
