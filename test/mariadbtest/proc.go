package mariadbtest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Memory reads a size field of a process's /proc status, in bytes: "VmRSS" (resident
// set) or "VmHWM" (its peak). Benchmarks and tests report the memory of Flotilla
// and MariaDB processes with it.
func Memory(pid int, field string) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// ResetPeakMemory starts a new VmHWM measurement of a process (Linux clear_refs 5).
func ResetPeakMemory(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
