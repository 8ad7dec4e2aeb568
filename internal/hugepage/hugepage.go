package hugepage

import (
	"os"
	"strings"
)

// Size is the size of a transparent huge page on amd64 and arm64 (4 KiB base pages).
const Size = 2 << 20

// Advisor gives huge-page advice, or none where the kernel or the operator said no
// (see the package invariants); its decision is taken once, when it is made.
type Advisor struct {
	on bool
}

// NewAdvisor reads the kernel's setting and the GODEBUG environment variable, once.
func NewAdvisor() Advisor {
	if v, ok := godebugValue("disablethp"); ok && v != "0" {
		return Advisor{}
	}
	return Advisor{on: Mode() == "madvise"}
}

// On reports whether the advisor gives advice.
func (a Advisor) On() bool { return a.on }

// Mode is the kernel's transparent huge page setting (always, madvise or never; ""
// where the kernel has none).
func Mode() string { return sysfsChoice("/sys/kernel/mm/transparent_hugepage/enabled") }

// Defrag is how hard the kernel works to find a huge page at a fault (always, defer,
// defer+madvise, madvise or never; "" when unknown). With madvise, its default, a
// fault in advised memory the kernel has reclaimed may wait for it to compact memory.
func Defrag() string { return sysfsChoice("/sys/kernel/mm/transparent_hugepage/defrag") }

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
