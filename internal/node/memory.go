package node

import (
	"runtime"
	"time"
)

// DefaultMemoryPretouch is how much heap a node faults in at start (memory_pretouch):
// about what one group's bulk ingest keeps in use, with the collector's headroom.
const DefaultMemoryPretouch = 256 << 20

// pretouch faults in n bytes of heap and hands them back to the runtime, as the JVM's
// AlwaysPreTouch does, so the first burst of work does not stall on fresh pages. A
// page touched for the first time costs a fault: about 14 µs each on the VMs this is
// measured on (a quarter of a cold node's ingest went to them), against copying that
// page in well under a microsecond. The pages stay the process's after the
// collector frees them because the binary returns memory with MADV_FREE (see
// cmd/flotilla's go:debug madvdontneed=0): the kernel reclaims them only when it
// needs memory, and a page it has not reclaimed is reused without a fault.
func pretouch(n Size) time.Duration {
	start := time.Now()
	const chunk = 4 << 20 // the size of a proposal's buffers
	keep := make([][]byte, 0, int(n/chunk)+1)
	for left := int64(n); left > 0; left -= chunk {
		b := make([]byte, min(left, chunk))
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	runtime.KeepAlive(keep)
	keep = nil
	runtime.GC() // the pages are free heap now, at hand for the next allocations
	return time.Since(start)
}
