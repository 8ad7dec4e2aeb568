package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// history records a run, one JSON object per line: faults with their times, writes
// and their acknowledgements.
type history struct {
	mu     sync.Mutex
	f      *os.File
	start  time.Time
	faults map[Kind]int
}

func newHistory(path string, start time.Time) (*history, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &history{f: f, start: start, faults: map[Kind]int{}}, nil
}

// add appends an event.
func (h *history) add(event string, fields map[string]any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rec := map[string]any{"t": time.Since(h.start).Seconds(), "event": event}
	for k, v := range fields {
		rec[k] = v
	}
	b, _ := json.Marshal(rec)
	h.f.Write(append(b, '\n'))
	if event == "fault" {
		h.faults[fields["kind"].(Kind)]++
	}
}

func (h *history) close() { h.f.Close() }

// summary is the one screen a run ends with.
func (h *history) summary(seed int64, path string, checked map[string]int, violations []string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "CHAOS seed %d (replay: FLOTILLA_CHAOS_SEED=%d), history %s\n", seed, seed, path)
	kinds := make([]string, 0, len(h.faults))
	for k, n := range h.faults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "CHAOS faults: %s\n", strings.Join(kinds, " "))
	names := make([]string, 0, len(checked))
	for n, c := range checked {
		names = append(names, fmt.Sprintf("%s=%d", n, c))
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "CHAOS transactions checked on every replica: %s\n", strings.Join(names, " "))
	fmt.Fprintf(&b, "CHAOS violations: %d\n", len(violations))
	for _, v := range violations {
		fmt.Fprintf(&b, "CHAOS   %s\n", v)
	}
	return b.String()
}
