package node

import (
	"fmt"
	"os"
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
// at a time instead of 4 KiB. The runtime gives back whole huge pages where it can
// (its scavenger rounds to them), so they stay whole. The advice covers the span from
// the first buffer to the end of the last, rounded out to huge pages: the heap between
// them is the runtime's too, and advice is a property of the mapping, not of the bytes.
// The kernel's own setting wins: with transparent huge pages "never" the advice does
// nothing, with "always" it changes nothing.
// An operator's GODEBUG=disablethp=1 (the runtime's own opt-out) is respected.
func adviseHugePages(bufs [][]byte) error {
	if godebugSet("disablethp=1") {
		return nil
	}
	lo, hi := ^uintptr(0), uintptr(0)
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		lo, hi = min(lo, p), max(hi, p+uintptr(len(b)))
	}
	if hi == 0 {
		return nil
	}
	lo &^= hugePageSize - 1
	hi = (hi + hugePageSize - 1) &^ (hugePageSize - 1)
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_HUGEPAGE); errno != 0 {
		return fmt.Errorf("madvise(MADV_HUGEPAGE) on %d bytes of heap: %w", hi-lo, errno)
	}
	return nil
}

// anonHugeBytes is how much of this process's memory is in transparent huge pages
// (AnonHugePages in /proc/self/smaps_rollup); 0 when it cannot be read.
func anonHugeBytes() uint64 { return kbField("/proc/self/smaps_rollup", "AnonHugePages:") }

// hugePagesMode is the kernel's transparent huge page setting (always, madvise or
// never; "" when unknown).
func hugePagesMode() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
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

// godebugSet reports whether GODEBUG holds setting (key=value); the runtime reads the
// last of a key's settings, and so does this.
func godebugSet(setting string) bool {
	key, _, _ := strings.Cut(setting, "=")
	found := false
	for _, kv := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			found = kv == setting
		}
	}
	return found
}
