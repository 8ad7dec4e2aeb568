// Package slowdisk delays every fsync of a node's storage (the segment store's
// and the raft log's) by a duration written in a file: the slow disk of the
// fault-injection suite (test/chaos), and a way for an operator to rehearse one.
// A node uses it only when started with FLOTILLA_FAULT_FSYNC_DELAY_FILE set;
// otherwise nothing wraps its filesystems (and, see Dragonboat, a node with the
// knob handles a failed raft write differently: it is for tests only).
//
// Invariants: a delay only postpones a sync, never skips, fails or reorders one;
// a missing, empty or unreadable file means no delay; the file is read at most
// every ReadEvery, so a sync costs no extra system call in between.
package slowdisk

import (
	"os"
	"strings"
	"sync"
	"time"

	gvfs "github.com/lni/goutils/vfs"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// EnvFile names the environment variable that points a node at the delay file.
const EnvFile = "FLOTILLA_FAULT_FSYNC_DELAY_FILE"

// ReadEvery is how stale the delay may be.
const ReadEvery = 100 * time.Millisecond

// Delay is the current fsync delay, read from its file. The zero value is not
// usable: call New.
type Delay struct {
	path string

	mu   sync.Mutex
	read time.Time
	d    time.Duration
}

// New reads the delay (a Go duration such as 200ms) from path.
func New(path string) *Delay { return &Delay{path: path} }

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
	if v := d.Current(); v > 0 {
		time.Sleep(v)
	}
}

// Pebble wraps the segment store's filesystem.
func (d *Delay) Pebble(fs vfs.FS) vfs.FS {
	return errorfs.Wrap(fs, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			d.wait()
		}
		return nil
	}))
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
