package statemachine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// bulkUpdates makes every Update a bulk load's: a file's close is not fsynced with
// it (see closeDue).
func bulkUpdates(s *Store) { s.closeSyncBelow = 0 }

// fileAppender appends whole files of transactions, one Update each.
type fileAppender struct {
	h        *harness
	ep, seq  uint64
	rowBytes int
}

// addFile opens served file f and appends n transactions to it, in one Update.
func (a *fileAppender) addFile(f, n int) {
	items := []Item{newFile(fmt.Sprintf("m.%d", f), binlog.Position{0: gt(0)})}
	prev := a.seq
	for i := 0; i < n; i++ {
		a.seq++
		items = append(items, txn(gt(a.seq), a.rowBytes))
	}
	a.h.mustAppend(&Append{Epoch: a.ep, PrevOrdinal: prev, Items: items})
}

// waitCompressed polls until files from..to of g are compressed.
func waitCompressed(t *testing.T, g *Group, from, to uint64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		done := true
		for no := from; no <= to; no++ {
			if _, err := os.Stat(g.segPath(no) + zstSuffix); err != nil {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("files %d to %d were not all compressed in 30 s", from, to)
		}
	}
}

// TestBulkCloseDefersFsync: a bulk load's Updates close files without an fsync, so
// the file before each waits for compression, until the maxUnsyncedCloses-th close
// fsyncs them all; a small Update fsyncs a close at once, and so does Sync (which an
// idle group's shard asks for with a snapshot).
func TestBulkCloseDefersFsync(t *testing.T) {
	h := newHarnessOn(t, vfs.Default, t.TempDir(), DefaultSegmentSize, bulkUpdates)
	defer h.close()
	a := &fileAppender{h: h, ep: h.claim(), rowBytes: 20000}
	a.addFile(1, 10)
	for f := 2; f <= maxUnsyncedCloses; f++ {
		a.addFile(f, 10)
	}
	// Closes of files 1 to maxUnsyncedCloses-1: files 1 to maxUnsyncedCloses-2 wait.
	if h.g.unsyncedCloses != maxUnsyncedCloses-1 || !h.g.CompressionWaiting() {
		t.Fatalf("after %d bulk closes: %d unsynced, compression waiting %v; want all unsynced and compression waiting",
			maxUnsyncedCloses-1, h.g.unsyncedCloses, h.g.CompressionWaiting())
	}
	if _, err := os.Stat(h.g.segPath(1) + zstSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file 1 was compressed before the segments closing it were fsynced (%v)", err)
	}
	a.addFile(maxUnsyncedCloses+1, 10) // the maxUnsyncedCloses-th close: fsynced
	if h.g.unsyncedCloses != 0 || h.g.CompressionWaiting() {
		t.Fatalf("after the %d-th bulk close: %d unsynced, compression waiting %v; want them fsynced", maxUnsyncedCloses, h.g.unsyncedCloses, h.g.CompressionWaiting())
	}
	waitCompressed(t, h.g, 1, maxUnsyncedCloses-1)

	// A small Update fsyncs the close at once.
	h.store.closeSyncBelow = closeSyncBelow
	a.addFile(maxUnsyncedCloses+2, 10)
	if h.g.unsyncedCloses != 0 || h.g.CompressionWaiting() {
		t.Fatalf("after a small Update's close: %d unsynced, compression waiting %v", h.g.unsyncedCloses, h.g.CompressionWaiting())
	}
	waitCompressed(t, h.g, maxUnsyncedCloses, maxUnsyncedCloses)

	// A bulk close waits for Sync.
	h.store.closeSyncBelow = 0
	a.addFile(maxUnsyncedCloses+3, 10)
	if !h.g.CompressionWaiting() {
		t.Fatal("a bulk close left no compression waiting")
	}
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	if h.g.unsyncedCloses != 0 || h.g.CompressionWaiting() {
		t.Fatalf("after Sync: %d unsynced, compression waiting %v", h.g.unsyncedCloses, h.g.CompressionWaiting())
	}
	waitCompressed(t, h.g, maxUnsyncedCloses+1, maxUnsyncedCloses+1)
}

// TestOpenChecksFilesClosedWithoutFsync: bulk Updates close files 1 and 2 without an
// fsync after file 1 was synced midway; the kernel then writes files 2 and 3 back
// (and the index, which other groups' commits sync), but not file 1's tail, and the
// power goes. Open must find the tear in file 1, two files behind the current one,
// and recover a valid prefix holding what was synced, instead of trusting an index
// that names records which are gone. (It checked only the current file and the one
// before it while every close after the first was fsynced.)
func TestOpenChecksFilesClosedWithoutFsync(t *testing.T) {
	const dir = "/flotilla/storage"
	fs := vfs.NewCrashableMem()
	h := newHarnessOn(t, fs, dir, 0, bulkUpdates)
	a := &fileAppender{h: h, ep: h.claim(), rowBytes: 5000}
	a.addFile(1, 10)
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	synced := a.seq
	a.h.mustAppend(&Append{Epoch: a.ep, PrevOrdinal: a.seq, Items: []Item{txn(gt(a.seq+1), 5000)}})
	a.seq++
	a.addFile(2, 10)
	a.addFile(3, 10)
	if h.g.unsyncedCloses != 2 {
		t.Fatalf("%d closes unsynced, want 2", h.g.unsyncedCloses)
	}
	for _, no := range []uint64{2, 3} {
		f, err := fs.Open(h.g.segPath(no))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if err := h.store.syncDir(h.g.dir); err != nil { // their names too
		t.Fatal(err)
	}
	if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	cut := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	h.close()

	h2 := newHarnessOn(t, cut, dir, 0)
	defer h2.close()
	seq := verifyPrefix(t, h2, rand.New(rand.NewPCG(1, 1)))
	if seq < synced {
		t.Fatalf("%d transactions were synced, %d survived", synced, seq)
	}
	t.Logf("after the cut: %d transactions (%d synced, %d appended)", seq, synced, a.seq)
}

// TestCloseTwiceInOneUpdate: an Update that closes two files (a bulk load of small
// served files) and so fsyncs: the older's compression reads its parts from its
// closed entry, which the same commit writes. Queued before that commit, it found
// the entry of the open file, with no later parts, and compressed the first part
// only.
func TestCloseTwiceInOneUpdate(t *testing.T) {
	h := newHarnessOn(t, vfs.Default, t.TempDir(), 64<<10, bulkUpdates)
	defer h.close()
	ep := h.claim()
	var seq uint64
	var items []Item
	for f := 1; f <= maxUnsyncedCloses+2; f++ {
		items = append(items, newFile(fmt.Sprintf("m.%d", f), binlog.Position{0: gt(0)}))
		for i := 0; i < 10; i++ {
			seq++
			items = append(items, txn(gt(seq), 20000)) // 200 KB a file: 4 parts
		}
	}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: items})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var plain []string
		for no := uint64(1); no <= maxUnsyncedCloses; no++ {
			fi, err := h.store.fileInfo(h.g.id, no)
			if err != nil {
				t.Fatal(err)
			}
			for k := range partSizes(fi) {
				if _, err := os.Stat(h.g.partPath(no, k) + zstSuffix); err != nil {
					plain = append(plain, h.g.partPath(no, k))
				}
			}
		}
		if len(plain) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("parts of the closed files still plain 30 s after their closing was fsynced: %v", plain)
		}
	}
}
