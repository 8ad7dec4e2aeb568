// Package buildinfo says what this binary is: its release version, the commit and
// time it was built from, the Go that built it, and the newest cluster version it
// understands.
//
// Invariants: ClusterVersion only grows from one release to the next; a release that
// writes a command, metadata field or relay message an older binary cannot read
// raises it, and uses the new format only once the cluster's version (recorded in
// the metadata, see package placement) has reached it.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// ClusterVersion is the newest cluster version this binary understands.
//
//   - 1: everything before cluster versions existed (nodes that report none).
//   - 2: the metadata command update_upstream (`flotilla upstream update`).
//   - 3: sequenced appends in upstream groups (statemachine.KindAppendSeq): a
//     syncer with several proposals in flight.
//   - 4: raft payloads in files beside the LogDB (internal/raftlog): a node's own raft
//     log, which a release before it cannot read (this version is what refuses it at
//     start).
//   - 5: salted raft payload files, recycled from log cuts
//     (internal/raftlog/spare.go): a release before it does not list a salted
//     file, and would find every reference into one missing.
//   - 6: the raft transport's own frames (internal/rafttransport): a release before
//     it reads only dragonboat's.
const ClusterVersion uint32 = 6

// Set at build time with -ldflags "-X ...buildinfo.version=... -X ...commit=...
// -X ...date=..." (see the Makefile). Package-level because -X can only set
// package-level strings; nothing writes them at run time.
var (
	version = ""
	commit  = ""
	date    = ""
)

// Info describes the running binary.
type Info struct {
	Version        string `json:"version"`
	Commit         string `json:"commit"`
	Date           string `json:"date"`
	GoVersion      string `json:"go_version"`
	ClusterVersion uint32 `json:"cluster_version"`
}

// Get returns the build's description: the -ldflags values, else what the Go
// toolchain recorded (module version, VCS revision and time), else "dev"/"unknown".
func Get() Info {
	i := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version(), ClusterVersion: ClusterVersion}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = strings.TrimPrefix(bi.Main.Version, "v")
		}
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.time":
				if i.Date == "" {
					i.Date = s.Value
				}
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && commit == "" && i.Commit != "" {
			i.Commit += "-dirty"
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	if i.Date == "" {
		i.Date = "unknown"
	}
	return i
}

// ShortCommit is the commit's first 12 characters (and a -dirty mark).
func (i Info) ShortCommit() string {
	c, dirty := strings.CutSuffix(i.Commit, "-dirty")
	if len(c) > 12 {
		c = c[:12]
	}
	if dirty {
		c += "-dirty"
	}
	return c
}

// String is the one line `flotilla --version` prints.
func (i Info) String() string {
	return fmt.Sprintf("flotilla %s (commit %s, built %s, %s, cluster version %d)", i.Version, i.ShortCommit(), i.Date, i.GoVersion, i.ClusterVersion)
}
