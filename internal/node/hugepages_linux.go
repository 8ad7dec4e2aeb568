package node

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of a transparent huge page on amd64 and arm64 (4 KiB
// base pages); advice is given in whole huge pages.
const hugePageSize = 2 << 20

// adviseHugePages asks the kernel to back the heap that holds bufs with transparent
// huge pages (MADV_HUGEPAGE), so that memory is faulted in, and after the runtime
// returns it (MADV_FREE, see cmd/flotilla's returnMemoryLazily) dirtied again, 2 MiB
// at a time instead of 4 KiB. The runtime's scavenger gives back whole huge pages
// where it can (it rounds to them), and MADV_FREE of a whole huge page does not
// split it. Each buffer's range is advised, rounded out to huge pages: a heap span
// lies inside one 64 MiB-aligned arena, so the rounding stays in the Go heap, and
// advice is a property of the mapping, not of the bytes (the kernel merges adjacent
// advised ranges). The kernel's own setting wins: with transparent huge pages
// "never" the advice does nothing, with "always" it changes nothing. An operator's
// GODEBUG=disablethp (the runtime's own opt-out, any value but 0) is respected.
//
// The cost, beyond the memory itself (bounded by memory_pretouch): with the kernel's
// defrag setting at madvise (its default), a fault in advised memory the kernel has
// reclaimed may wait for it to compact memory; memory_pretouch 0 avoids the advice.
func adviseHugePages(bufs [][]byte) error {
	if v, ok := godebugValue("disablethp"); ok && v != "0" {
		return nil
	}
	var errs []error
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		lo := p &^ (hugePageSize - 1)
		hi := (p + uintptr(len(b)) + hugePageSize - 1) &^ (hugePageSize - 1)
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_HUGEPAGE); errno != 0 {
			errs = append(errs, fmt.Errorf("madvise(MADV_HUGEPAGE) on %d bytes of heap at %#x: %w", hi-lo, lo, errno))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d buffers not advised: %w", len(errs), len(bufs), errors.Join(errs...))
	}
	return nil
}

// anonHugeBytes is how much of this process's memory is in transparent huge pages
// (AnonHugePages in /proc/self/smaps_rollup); 0 when it cannot be read.
func anonHugeBytes() uint64 { return kbField("/proc/self/smaps_rollup", "AnonHugePages:") }

// hugePagesMode is the kernel's transparent huge page setting (always, madvise or
// never; "" when the kernel has none).
func hugePagesMode() string { return sysfsChoice("/sys/kernel/mm/transparent_hugepage/enabled") }

// hugePagesDefrag is how hard the kernel works to find a huge page at a fault
// (always, defer, defer+madvise, madvise or never; "" when unknown).
func hugePagesDefrag() string { return sysfsChoice("/sys/kernel/mm/transparent_hugepage/defrag") }

// sysfsChoice is the selected value of a sysfs setting that lists its choices with
// the selected one in brackets ("always [madvise] never"); "" when unreadable.
func sysfsChoice(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// thpFaults is the kernel's count of faults that got a huge page and of those that
// fell back to small pages (/proc/vmstat thp_fault_alloc, thp_fault_fallback).
func thpFaults() (alloc, fallback uint64) {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, " ")
		n, _ := strconv.ParseUint(v, 10, 64)
		switch k {
		case "thp_fault_alloc":
			alloc = n
		case "thp_fault_fallback":
			fallback = n
		}
	}
	return alloc, fallback
}

// godebugValue is the value GODEBUG gives key (the last one, as the runtime reads it).
func godebugValue(key string) (string, bool) {
	val, found := "", false
	for _, kv := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			val, found = v, true
		}
	}
	return val, found
}
