package faultfs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	gvfs "github.com/lni/goutils/vfs"
)

// A power cut leaves each file as its last sync made it: unsynced appends are
// lost, a rename or link carries the record, a reopened file keeps what it had, a
// truncation lowers what can be durable, and files the journal never saw are left
// alone.
func TestPowerCutKeepsWhatWasSynced(t *testing.T) {
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	fs, _, err := Knobs{JournalFile: journal}.Open(vfs.Default, gvfs.Default)
	if err != nil {
		t.Fatal(err)
	}
	write := func(f vfs.File, n int) {
		t.Helper()
		if _, err := f.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	path := func(name string) string { return filepath.Join(dir, name) }

	a, _ := fs.Create(path("a"), vfs.WriteCategoryUnspecified)
	write(a, 100)
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	write(a, 50) // lost
	a.Close()
	if err := fs.Rename(path("a"), path("a2")); err != nil {
		t.Fatal(err)
	}
	b, _ := fs.Create(path("b"), vfs.WriteCategoryUnspecified)
	write(b, 10) // never synced: all lost
	if err := fs.Link(path("a2"), path("a3")); err != nil {
		t.Fatal(err)
	}
	c, _ := fs.Create(path("c"), vfs.WriteCategoryUnspecified)
	write(c, 30)
	c.SyncData()
	c.Close()
	c, err = fs.OpenReadWrite(path("c"), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(make([]byte, 5), 30); err != nil {
		t.Fatal(err)
	}
	d, _ := fs.Create(path("d"), vfs.WriteCategoryUnspecified)
	write(d, 20)
	d.Sync()
	if err := fs.Remove(path("d")); err != nil {
		t.Fatal(err)
	}
	e, _ := fs.Create(path("e"), vfs.WriteCategoryUnspecified)
	write(e, 40)
	e.Sync()
	tr, ok := e.(interface{ Truncate(int64) error })
	if !ok {
		t.Fatal("a file of the operating system's filesystem lost its Truncate under the wrapper")
	}
	if err := tr.Truncate(10); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WriteAt(make([]byte, 5), 10); err != nil { // after the cut, unsynced: lost
		t.Fatal(err)
	}
	if err := os.WriteFile(path("other"), make([]byte, 7), 0o644); err != nil {
		t.Fatal(err)
	}

	lost, err := PowerCut(journal)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"a2": 100, "a3": 100, "b": 0, "c": 30, "e": 10, "other": 7}
	for name, size := range want {
		fi, err := os.Stat(path(name))
		if err != nil || fi.Size() != size {
			t.Errorf("%s after the power cut: %v, want %d bytes", name, err, size)
		}
	}
	// a2 and a3 are one file (a link): its 50 bytes are lost once.
	if lost != 50+10+5+5 {
		t.Errorf("lost %d bytes, want %d", lost, 50+10+5+5)
	}
}

// The raft log's files are journaled too, under dragonboat's error-injecting
// filesystem (the only kind it takes besides its own): a power cut loses what a
// raft file had not synced, keeps what it had, and follows renames.
func TestPowerCutReachesTheRaftLog(t *testing.T) {
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	_, raft, err := Knobs{JournalFile: journal}.Open(vfs.Default, gvfs.Default)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := raft.(*gvfs.ErrorFS); !ok {
		t.Fatalf("the raft filesystem is a %T: dragonboat panics on anything but its own kinds", raft)
	}
	path := func(name string) string { return filepath.Join(dir, name) }
	f, err := raft.Create(path("wal"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 200)); err != nil { // lost
		t.Fatal(err)
	}
	f.Close()
	if err := raft.Rename(path("wal"), path("wal2")); err != nil {
		t.Fatal(err)
	}
	g, err := raft.OpenForAppend(path("wal2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write(make([]byte, 50)); err != nil { // lost too: never synced
		t.Fatal(err)
	}
	g.Close()
	lost, err := PowerCut(journal)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path("wal2"))
	if err != nil || fi.Size() != 300 || lost != 250 {
		t.Fatalf("after the cut: %v (size %d), %d bytes lost; want 300 left and 250 lost", err, fi.Size(), lost)
	}
}
