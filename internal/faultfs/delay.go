package faultfs

import (
	"os"
	"strings"
	"sync"
	"time"

	gvfs "github.com/lni/goutils/vfs"
)

// ReadEvery is how stale the delay may be.
const ReadEvery = 100 * time.Millisecond

// Delay is the current fsync delay, read from its file. The zero value is not
// usable: call NewDelay.
type Delay struct {
	path string

	mu   sync.Mutex
	read time.Time
	d    time.Duration
}

// NewDelay reads the delay (a Go duration such as 200ms) from path.
func NewDelay(path string) *Delay { return &Delay{path: path} }

// Current is the delay the file holds now.
func (d *Delay) Current() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := time.Now(); now.Sub(d.read) >= ReadEvery {
		d.read = now
		d.d = 0
		if b, err := os.ReadFile(d.path); err == nil {
			if v, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil && v > 0 {
				d.d = v
			}
		}
	}
	return d.d
}

func (d *Delay) wait() {
	if d == nil {
		return
	}
	if v := d.Current(); v > 0 {
		time.Sleep(v)
	}
}

// Dragonboat wraps the raft log's filesystem (NodeHostConfig.Expert.FS).
// dragonboat v3 accepts no filesystem but its own default, memory and
// error-injecting ones, so this is the error-injecting one with an injector that
// only waits. dragonboat then runs its error-injection mode: a step worker's
// panic (a failed raft write) is recovered and stops that worker instead of the
// process. Hence a node takes the knob only in fault-injection runs.
func (d *Delay) Dragonboat(fs gvfs.FS) gvfs.FS { return gvfs.Wrap(fs, raftInjector{d}) }

type raftInjector struct{ d *Delay }

// MaybeError delays syncs and fails nothing.
func (i raftInjector) MaybeError(op gvfs.Op) error {
	if op == gvfs.OpSync {
		i.d.wait()
	}
	return nil
}
