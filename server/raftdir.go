package server

import (
	"bytes"
	"crypto/md5"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// checkRaftFlagFiles reports a damaged flag file of dragonboat's in the raft
// directory dir before dragonboat reads it. dragonboat writes two at a node host's
// first start, in place (create, write, fsync), so a crash or a full disk then can
// leave either empty or cut short: dragonboat.ds (the node host's address,
// deployment and formats, checked at every start) and NODEHOST.ID (its 8-byte
// identity). On a damaged one it panics with a string, recovers that panic itself
// (it re-raises only errors) and returns neither a node host nor an error, logging
// nothing: the node then died of a nil pointer dereference that named nothing. A
// flag file is an 8-byte checksum (the second half of the MD5 of the rest) and the
// record. A missing file is no damage: a new node host writes it.
func checkRaftFlagFiles(dir string) error {
	for _, ff := range [...]struct {
		name, holds string
		record      int // the record's size; 0: any
	}{
		{"dragonboat.ds", "the node host's address and deployment", 0},
		{"NODEHOST.ID", "the node host's identity", 8},
	} {
		path := filepath.Join(dir, ff.name)
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read the raft log's flag file: %w", err)
		}
		damaged := len(b) < 8 || ff.record > 0 && len(b) != 8+ff.record
		if !damaged {
			sum := md5.Sum(b[8:])
			damaged = !bytes.Equal(b[:8], sum[8:])
		}
		if damaged {
			return fmt.Errorf("the raft log's flag file %s (%s) is damaged (%d bytes; a crash or a full disk during the node's first start can leave it so): "+
				"the node cannot check its raft data against it. Restore the file from a backup of this node, or remove the node from its cluster "+
				"(flotilla node drain, then node remove) and add it again with an empty data directory: its groups are copied back from their other replicas",
				path, ff.holds, len(b))
		}
	}
	return nil
}

// errRaftStartSilent is what a start of dragonboat's node host that returned neither
// a node host nor an error means: it recovered a panic whose value was not an error
// (see checkRaftFlagFiles for the cases known).
var errRaftStartSilent = errors.New("dragonboat stopped starting the raft node host without an error (it recovers its own panics, and logs only some): " +
	"check the files under the data directory's raft/ (damaged, unreadable or not what they should be: a file where a directory should be)")
