//go:build !linux

package server

// anonHugeBytes is 0 where /proc/self/smaps_rollup does not exist.
func anonHugeBytes() uint64 { return 0 }

// thpFaults counts nothing where transparent huge pages do not exist.
func thpFaults() (alloc, fallback uint64) { return 0, 0 }
