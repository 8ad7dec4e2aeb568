//go:build !linux

package node

// adviseHugePages does nothing where madvise(MADV_HUGEPAGE) does not exist.
func adviseHugePages([][]byte) error { return nil }

// anonHugeBytes is 0 where /proc/self/smaps_rollup does not exist.
func anonHugeBytes() uint64 { return 0 }

// hugePagesMode is unknown where transparent huge pages do not exist.
func hugePagesMode() string { return "" }

// hugePagesDefrag is unknown where transparent huge pages do not exist.
func hugePagesDefrag() string { return "" }

// thpFaults counts nothing where transparent huge pages do not exist.
func thpFaults() (alloc, fallback uint64) { return 0, 0 }
