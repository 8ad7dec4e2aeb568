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

// raftFlagFile is the file in which dragonboat records, at a node host's first
// start, its address, deployment and binary format, and checks them at every later
// start. It writes it in place (create, write, fsync), so a crash or a full disk
// during a node's first start can leave it empty or cut short.
const raftFlagFile = "dragonboat.ds"

// checkRaftFlagFile reports a damaged raftFlagFile in the raft directory dir before
// dragonboat reads it. dragonboat panics on one with a string, recovers that panic
// itself (it re-raises only errors) and returns neither a node host nor an error:
// the node then failed with a nil pointer dereference that named nothing. The file
// is an 8-byte checksum (the second half of the MD5 of the rest) and the record. A
// missing file is no damage: a new node host writes it.
func checkRaftFlagFile(dir string) error {
	path := filepath.Join(dir, raftFlagFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the raft log's flag file: %w", err)
	}
	damaged := len(b) < 8
	if !damaged {
		sum := md5.Sum(b[8:])
		damaged = !bytes.Equal(b[:8], sum[8:])
	}
	if damaged {
		return fmt.Errorf("the raft log's flag file %s is damaged (%d bytes; a crash or a full disk during the node's first start can leave it so): "+
			"the node cannot check its raft data against it. Restore the file from a backup of this node, or remove the node from its cluster "+
			"(flotilla node drain, then node remove) and add it again with an empty data directory: its groups are copied back from their other replicas", path, len(b))
	}
	return nil
}

// errRaftStartSilent is what a start of dragonboat's node host that returned neither
// a node host nor an error means: it recovered a panic whose value was not an error
// (see checkRaftFlagFile for the one case known).
var errRaftStartSilent = errors.New("dragonboat stopped starting the raft node host without an error (it recovers its own panics): " +
	"its log lines above say what it found; check the files under the data directory's raft/")
