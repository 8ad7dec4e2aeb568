package node

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
)

// A data directory last used at a newer cluster version is refused before anything
// opens it; the current version or an older one is accepted.
func TestDataDirectoryVersion(t *testing.T) {
	dir := t.TempDir()
	if v, err := checkDataVersion(dir); err != nil || v != 0 {
		t.Fatalf("a new data directory: version %d, %v", v, err)
	}
	if err := recordClusterVersion(dir, buildinfo.ClusterVersion); err != nil {
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
