package server

import (
	"os"
	"strconv"
	"strings"
)

// anonHugeBytes is how much of this process's memory is in transparent huge pages
// (AnonHugePages in /proc/self/smaps_rollup); 0 when it cannot be read.
func anonHugeBytes() uint64 { return kbField("/proc/self/smaps_rollup", "AnonHugePages:") }

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
