package hugepage

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Advise advises the range of each buffer, which must be a Go heap slice, rounded
// out to huge pages (see the package invariants). Advice helps most before the
// buffer's pages are first touched: a large allocation fresh from the OS is not
// cleared by the Go runtime, so memory advised right after make is faulted in as
// huge pages (reused heap memory the runtime clears in make is touched already).
func (a Advisor) Advise(bufs ...[]byte) error {
	if !a.on {
		return nil
	}
	var errs []error
	for _, b := range bufs {
		if cap(b) == 0 {
			continue
		}
		p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		lo := p &^ (Size - 1)
		hi := (p + uintptr(cap(b)) + Size - 1) &^ (Size - 1)
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_HUGEPAGE); errno != 0 {
			errs = append(errs, fmt.Errorf("madvise(MADV_HUGEPAGE) on %d bytes of heap at %#x: %w", hi-lo, lo, errno))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d buffers not advised: %w", len(errs), len(bufs), errors.Join(errs...))
	}
	return nil
}

// Advised reports whether the kernel holds the first byte of b as advised for huge
// pages: the "hg" flag of its mapping in /proc/self/smaps. It is how a test (or an
// operator's diagnosis) checks that advice reached the kernel, whether or not the
// kernel then found huge pages.
func Advised(b []byte) (bool, error) {
	if cap(b) == 0 {
		return false, nil
	}
	p := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return false, fmt.Errorf("read the process's mappings: %w", err)
	}
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			z, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				in = a <= p && p < z
				continue
			}
		}
		if in && f[0] == "VmFlags:" {
			return slices.Contains(f[1:], "hg"), nil
		}
	}
	return false, fmt.Errorf("no mapping of /proc/self/smaps holds %#x", p)
}
