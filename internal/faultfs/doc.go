// Package faultfs wraps a node's filesystems to inject the storage faults of the
// fault-injection suite (test/chaos): a slow disk (every fsync waits the duration
// in a file, Delay) and a power cut (a journal of what each file had when it was
// last synced, Journal, from which PowerCut truncates every file back, losing
// what the page cache held and the disk did not).
//
// A node uses it only when started with FLOTILLA_FAULT_FSYNC_DELAY_FILE or
// FLOTILLA_FAULT_SYNC_JOURNAL set (Knobs); otherwise nothing wraps its
// filesystems. It is for tests: with either knob, dragonboat runs its
// error-injection mode (see Delay.Dragonboat), in which a raft step worker's
// panic stops that worker silently instead of the process.
//
// Invariants:
//   - A delay only postpones a sync, never skips, fails or reorders one; a
//     missing, empty or unreadable delay file means no delay.
//   - The journal records no more loss than a real power cut could cause for the
//     files it covers (the segment store and its index; the raft log: dragonboat's
//     LogDB, internal/raftlog's payload files, and snapshot files, less those a
//     directory rename moved, which keep no record and are left whole): a size is recorded after
//     the full sync that made it durable returned, a create after it succeeded, a
//     rename or link carries its file's record, and a journal that cannot be
//     written fails the operation. PowerCut therefore loses only what a power cut
//     could lose (often less: directory entries and data a partial sync or the
//     page cache's own writeback made durable are kept, and so are overwrites
//     inside a file's synced size, such as a recycled raft payload file's, which
//     a power cut could lose: internal/raftlog's own power-loss test covers
//     those); files it has no record of are left alone.
package faultfs

import (
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2/vfs"
	gvfs "github.com/lni/goutils/vfs"
)

// The environment variables a node reads its knobs from.
const (
	EnvDelayFile   = "FLOTILLA_FAULT_FSYNC_DELAY_FILE"
	EnvJournalFile = "FLOTILLA_FAULT_SYNC_JOURNAL"
)

// Knobs are the fault-injection settings of a node: empty paths inject nothing.
type Knobs struct {
	DelayFile   string // a slow disk: every fsync waits the duration this file holds
	JournalFile string // a power cut's journal, appended to at every sync
}

// KnobsFromEnv reads the knobs from the environment.
func KnobsFromEnv() Knobs {
	return Knobs{DelayFile: os.Getenv(EnvDelayFile), JournalFile: os.Getenv(EnvJournalFile)}
}

// Enabled reports whether any knob is set.
func (k Knobs) Enabled() bool { return k.DelayFile != "" || k.JournalFile != "" }

// String names the knobs for the node's start-up warning.
func (k Knobs) String() string {
	return fmt.Sprintf("%s=%q %s=%q", EnvDelayFile, k.DelayFile, EnvJournalFile, k.JournalFile)
}

// Open wraps the segment store's filesystem and dragonboat's (the journal's wrapper
// under dragonboat's error-injecting one: dragonboat takes no other). The journal
// stays open for the life of the process.
func (k Knobs) Open(store vfs.FS, raft gvfs.FS) (vfs.FS, gvfs.FS, error) {
	var d *Delay
	if k.DelayFile != "" {
		d = NewDelay(k.DelayFile)
	}
	var j *Journal
	if k.JournalFile != "" {
		var err error
		if j, err = OpenJournal(k.JournalFile); err != nil {
			return nil, nil, err
		}
	}
	if j != nil {
		raft = &raftFS{FS: raft, journal: j}
	}
	if d != nil || j != nil {
		raft = d.Dragonboat(raft) // a nil delay waits for nothing
	}
	return &storeFS{FS: store, delay: d, journal: j}, raft, nil
}
