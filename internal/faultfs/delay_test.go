package faultfs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	gvfs "github.com/lni/goutils/vfs"
)

type syncer interface{ Sync() error }

// timedSync is how long one sync of a new file takes.
func timedSync(t *testing.T, create func(string) (syncer, error), path string) time.Duration {
	t.Helper()
	f, err := create(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := f.Sync(); err != nil {
		t.Fatalf("a delayed sync must not fail: %v", err)
	}
	return time.Since(start)
}

// Both wrapped filesystems wait the file's delay at every sync, follow the file
// when it changes, and wait nothing when it is gone.
func TestSyncsWaitTheFilesDelay(t *testing.T) {
	dir := t.TempDir()
	knob := filepath.Join(dir, "delay")
	pfs, rfs, err := Knobs{DelayFile: knob}.Open(vfs.Default, gvfs.Default)
	if err != nil {
		t.Fatal(err)
	}
	fss := map[string]func(string) (syncer, error){
		"store": func(p string) (syncer, error) { return pfs.Create(p, vfs.WriteCategoryUnspecified) },
		"raft":  func(p string) (syncer, error) { return rfs.Create(p) },
	}
	for name, create := range fss {
		if got := timedSync(t, create, filepath.Join(dir, name+"0")); got > 150*time.Millisecond {
			t.Fatalf("%s: without a delay file a sync took %s", name, got)
		}
	}
	if err := os.WriteFile(knob, []byte("300ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ReadEvery) // the file is read at most every ReadEvery
	for name, create := range fss {
		if got := timedSync(t, create, filepath.Join(dir, name+"1")); got < 300*time.Millisecond {
			t.Fatalf("%s: with 300ms in the file a sync took %s", name, got)
		}
	}
	if err := os.Remove(knob); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ReadEvery)
	for name, create := range fss {
		if got := timedSync(t, create, filepath.Join(dir, name+"2")); got > 150*time.Millisecond {
			t.Fatalf("%s: after the file went a sync took %s", name, got)
		}
	}
}
