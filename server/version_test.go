package server

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	"github.com/flotilla-relay/flotilla/internal/raftlog"
	"github.com/flotilla-relay/flotilla/internal/rafttransport"
)

// A data directory last used at a newer cluster version is refused before anything
// opens it; the current version or an older one is accepted.
func TestDataDirectoryVersion(t *testing.T) {
	dir := t.TempDir()
	if v, err := checkDataVersion(dir); err != nil || v != 0 {
		t.Fatalf("a new data directory: version %d, %v", v, err)
	}
	if err := writeClusterVersion(dir, buildinfo.ClusterVersion); err != nil {
		t.Fatal(err)
	}
	if v, err := checkDataVersion(dir); err != nil || v != buildinfo.ClusterVersion {
		t.Fatalf("the binary's own cluster version: version %d, %v", v, err)
	}
	newer := strconv.FormatUint(uint64(buildinfo.ClusterVersion+1), 10)
	if err := os.WriteFile(filepath.Join(dir, clusterVersionFile), []byte(newer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := checkDataVersion(dir)
	if err == nil || !strings.Contains(err.Error(), "belongs to a cluster at version "+newer) || !strings.Contains(err.Error(), "install the release") {
		t.Fatalf("a newer cluster version: %v", err)
	}
	os.WriteFile(filepath.Join(dir, clusterVersionFile), []byte("x"), 0o600)
	if _, err := checkDataVersion(dir); err == nil || !strings.Contains(err.Error(), "not a cluster version") {
		t.Fatalf("a garbled file: %v", err)
	}
}

// TestNoteClusterVersion: the recorded version only moves forward (a restarted node's
// metadata replica may report an older one than it recorded), and the raft log's
// payload files start only once version 4 is recorded, their recycling once 5 is, the
// raft transport's own frames once 6 is.
func TestNoteClusterVersion(t *testing.T) {
	dir := t.TempDir()
	n := &Node{cfg: Config{DataDir: dir}, payloadFiles: new(atomic.Bool), recycle: new(atomic.Bool), raftWire: new(atomic.Bool), log: slog.New(slog.DiscardHandler)}
	recorded := func() uint32 {
		v, err := checkDataVersion(dir)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := n.noteClusterVersion(raftlog.PayloadFilesVersion - 1); err != nil {
		t.Fatal(err)
	}
	if n.payloadFiles.Load() || recorded() != raftlog.PayloadFilesVersion-1 {
		t.Fatalf("at version %d: payload files %v, recorded %d", raftlog.PayloadFilesVersion-1, n.payloadFiles.Load(), recorded())
	}
	if err := n.noteClusterVersion(raftlog.PayloadFilesVersion); err != nil {
		t.Fatal(err)
	}
	if !n.payloadFiles.Load() || n.recycle.Load() || recorded() != raftlog.PayloadFilesVersion {
		t.Fatalf("at version %d: payload files %v, recycled %v, recorded %d", raftlog.PayloadFilesVersion, n.payloadFiles.Load(), n.recycle.Load(), recorded())
	}
	if err := n.noteClusterVersion(raftlog.PayloadFilesVersion - 1); err != nil {
		t.Fatal(err)
	}
	if recorded() != raftlog.PayloadFilesVersion {
		t.Fatalf("a lagging metadata replica's version %d overwrote the recorded %d", raftlog.PayloadFilesVersion-1, raftlog.PayloadFilesVersion)
	}
	if err := n.noteClusterVersion(raftlog.RecycleVersion); err != nil {
		t.Fatal(err)
	}
	if !n.recycle.Load() || n.raftWire.Load() || recorded() != raftlog.RecycleVersion {
		t.Fatalf("at version %d: recycled %v, own raft frames %v, recorded %d", raftlog.RecycleVersion, n.recycle.Load(), n.raftWire.Load(), recorded())
	}
	if err := n.noteClusterVersion(rafttransport.WireVersion); err != nil {
		t.Fatal(err)
	}
	if !n.raftWire.Load() || recorded() != rafttransport.WireVersion {
		t.Fatalf("at version %d: own raft frames %v, recorded %d", rafttransport.WireVersion, n.raftWire.Load(), recorded())
	}
}
