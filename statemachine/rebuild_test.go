package statemachine

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// The tests here each pin one way a rebuild of the index from the segments (Open,
// when a power cut left the index ahead of them) went wrong. TestPowerLoss found
// them all, in some runs; these find each in every run.

// indexFiles returns the file entries of g's index, by file number.
func indexFiles(t *testing.T, h *harness) map[uint64]fileInfo {
	t.Helper()
	tail, _ := h.g.Tail()
	out := map[uint64]fileInfo{}
	for no := uint64(0); no <= tail.File+1; no++ {
		if fi, err := h.store.fileInfo(h.g.id, no); err == nil {
			out[no] = fi
		}
	}
	return out
}

// rebuildAgrees rebuilds g's index from its segments, as Open does after a power cut,
// and checks that it comes back as it was: the segments' recIndex records must carry
// everything the index holds that the served records do not, file entries above all.
func rebuildAgrees(t *testing.T, h *harness) {
	t.Helper()
	before, applied := indexFiles(t, h), h.g.m.Applied
	if err := h.g.rebuildIndex(); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	h.g.startStates, h.g.startSets = map[uint64]binlog.Position{}, map[uint64]binlog.MySQLSet{}
	after := indexFiles(t, h)
	if h.g.m.Applied != applied || !reflect.DeepEqual(before, after) {
		t.Fatalf("rebuilt from the segments, the index is at entry %d with files\n%+v\nwas at %d with files\n%+v", h.g.m.Applied, after, applied, before)
	}
}

// TestClaimKeepsTheRecordOfANewFile: a transaction begins right after a new file's
// header, then a new epoch drops its piece. The drop cut the segment at the end of
// the last complete transaction, the header's end, which erased the recIndex record
// of the Update that opened the file: the only record of its entry and of the
// previous file's closed one. A later rebuild then had no entry for the file (and
// an open one for the closed file): "no served file", "after transaction 0 comes
// ...".
func TestClaimKeepsTheRecordOfANewFile(t *testing.T) {
	h := newHarnessSized(t, t.TempDir(), 64<<10)
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 1000)}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{newFile("m.2", nil)}})
	ev := txnEvents(gt(2), 1000)
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: ev[:binlog.HeaderLen+13+binlog.ChecksumLen]}}}}) // its GTID event
	h.claim()
	rebuildAgrees(t, h)
}

// TestClaimKeepsANewFileOpenedWithAPiece: one Append opens a file and begins a
// transaction (the syncer proposes them together when a large transaction follows
// a rotation), so its recIndex record, the only carrier of the new file's entry and
// the closed one's, lies after the piece. A new epoch's drop cuts it away with the
// piece: the record the drop writes must carry those entries.
func TestClaimKeepsANewFileOpenedWithAPiece(t *testing.T) {
	h := newHarnessSized(t, t.TempDir(), 64<<10)
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 1000)}})
	ev := txnEvents(gt(2), 1000)
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{newFile("m.2", nil),
		{Txn: &Txn{GTID: gt(2), First: true, Events: ev[:binlog.HeaderLen+13+binlog.ChecksumLen]}}}})
	h.claim()
	rebuildAgrees(t, h)
}

// storedMeta reads g's meta as its index stores it.
func storedMeta(t *testing.T, h *harness) meta {
	t.Helper()
	v, closer, err := h.store.db.Get(metaKey(h.g.id))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	var m meta
	if err := json.Unmarshal(v, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// chop cuts the file at path on fs to its first size bytes, durably.
func chop(t *testing.T, fs vfs.FS, path string, size int64) {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	_, err = io.ReadFull(io.NewSectionReader(f, 0, size), b)
	f.Close()
	if err != nil {
		t.Fatalf("chop %s to %d bytes: %v", path, size, err)
	}
	out, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err == nil {
		_, err = out.Write(b)
	}
	if err == nil {
		err = out.Sync()
	}
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// cutKeepingAll is a power cut that loses nothing: the test then takes what it
// means to lose itself.
func cutKeepingAll(fs *vfs.MemFS) *vfs.MemFS {
	return fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 1))})
}

// twoFilesIndexDurable appends two files of one transaction each as a bulk load's
// Updates (the second closes the first without an fsync), then makes the index
// durable as another group's synced commit would: the segments are not.
func twoFilesIndexDurable(t *testing.T) (*harness, *vfs.MemFS) {
	t.Helper()
	fs := vfs.NewCrashableMem()
	h := newHarnessOn(t, fs, powerLossDir, 0, bulkUpdates)
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 1000)}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{newFile("m.2", nil), txn(gt(2), 1000)}})
	if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	return h, fs
}

// powerLossDir is where the tests on a crashable filesystem keep the store.
const powerLossDir = "/flotilla/storage"

// TestOpenRestoresALostRedoRecord: the power cut kept an Update's index commit
// (another group's synced commit carried the shared WAL) and its records, but not
// its recIndex record. Open needs nothing from it and cuts the segment where the
// stored meta ends, but a later rebuild does: it held the new file's entry and the
// closed one's. Open must write it again.
func TestOpenRestoresALostRedoRecord(t *testing.T) {
	h, fs := twoFilesIndexDurable(t)
	end := int64(storedMeta(t, h).PartSeg) // where the last recIndex record begins
	cut, seg := cutKeepingAll(fs), h.g.segPath(2)
	h.close()
	chop(t, cut, seg, end)

	h = newHarnessOn(t, cut, powerLossDir, 0)
	defer h.close()
	if h.g.m.Applied != 3 {
		t.Fatalf("opened at entry %d, want 3 (the index and the records were kept)", h.g.m.Applied)
	}
	rebuildAgrees(t, h)
}

// TestRebuildFindsAClosedFilesLostTail: a closed file's part lost its tail, a
// recIndex record at a record boundary, while the next part, holding the file's
// Rotate, survived. The scan moved on to that part early, and nothing in the next
// file told (offsets start over there), so the rebuilt index claimed a longer part
// than the disk holds: "corrupt segment ... read record header: EOF". The next
// file's closed entry tells; the rebuild must stop before it.
func TestRebuildFindsAClosedFilesLostTail(t *testing.T) {
	fs := vfs.NewCrashableMem()
	// Parts of 100 bytes: each served record but the first starts a part, and the
	// recIndex records stay in the part of the record before them.
	h := newHarnessOn(t, fs, powerLossDir, 100, bulkUpdates)
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 1000)}})
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{txn(gt(2), 1000)}})
	last := len(h.g.m.PartStarts)                             // the part of transaction 2 and its recIndex record
	txnEnd := int64(h.g.m.SegSize - h.g.m.PartStarts[last-1]) // where that record begins in it
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{newFile("m.2", nil), txn(gt(3), 1000)}})
	if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	cut, part := cutKeepingAll(fs), h.g.partPath(1, last)
	h.close()
	chop(t, cut, part, txnEnd)

	h = newHarnessOn(t, cut, powerLossDir, 100)
	defer h.close()
	// Transaction 2's Update lost its record, and transaction 3's follows it.
	if seq := verifyPrefix(t, h, rand.New(rand.NewPCG(2, 2))); seq != 1 || h.g.m.Applied != 2 {
		t.Fatalf("%d transactions, entry %d after the cut; want 1 and entry 2 (what the Sync covered)", seq, h.g.m.Applied)
	}
}

// TestRebuildWithoutTheFirstFileStartsOver: the power cut took every part of file
// 1, never fsynced, and kept file 2 and the index. No file 1 means no fsync since
// it was created (one would have made its directory entry durable), so nothing of
// the group is durable in its segments: it starts over from the raft log. The
// rebuild used to begin at file 2 and keep an index whose first file is gone.
func TestRebuildWithoutTheFirstFileStartsOver(t *testing.T) {
	h, fs := twoFilesIndexDurable(t)
	cut, seg := cutKeepingAll(fs), h.g.segPath(1)
	h.close()
	if err := cut.Remove(seg); err != nil {
		t.Fatal(err)
	}

	h = newHarnessOn(t, cut, powerLossDir, 0)
	defer h.close()
	if tail, _ := h.g.Tail(); tail.Applied != 0 || tail.File != 0 {
		t.Fatalf("opened at entry %d, file %d; want an empty group (entry 0) for raft to apply again", tail.Applied, tail.File)
	}
}

// TestSnapshotInstallCarriesFileEntries: a snapshot's current file ends before its
// last Update's recIndex record, here the one that closed file 1 and opened file 2,
// the only record of those entries. The replica that installs it must hold them in
// its segments too: Open writes a record with every file's entry (the restore used
// to go back only to the peer's sync place, past file 1).
func TestSnapshotInstallCarriesFileEntries(t *testing.T) {
	src := newHarnessSized(t, t.TempDir(), 64<<10)
	defer src.close()
	ep := src.claim()
	src.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 1000)}})
	src.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{newFile("m.2", nil), txn(gt(2), 1000)}})
	dst := snapshotInto(t, src, newHarnessSized(t, t.TempDir(), 64<<10))
	defer dst.close()
	rebuildAgrees(t, dst)
}

// TestOpenWritesEveryFileEntryOnce: a store of a release before 0.50 (its meta
// without file_records) may lack file entries in its segments (a new epoch could cut
// them away). Its first Open under 0.50 writes a record with every file's entry; the
// next commit records that it did.
func TestOpenWritesEveryFileEntryOnce(t *testing.T) {
	dir := t.TempDir()
	h := newHarnessSized(t, dir, 64<<10)
	a := &fileAppender{h: h, ep: h.claim(), rowBytes: 1000}
	a.addFile(1, 2)
	h.g.m.FileRecords = false // the later commits' metas, stored and in records, lack it
	a.addFile(2, 2)
	a.addFile(3, 2)
	if storedMeta(t, h).FileRecords {
		t.Fatal("the stored meta says file_records")
	}
	h.close()

	h = newHarnessSized(t, dir, 64<<10)
	if n := lastRecordFiles(t, h); n != 3 {
		t.Fatalf("after the first Open of an older store the last redo record carries %d file entries, want all 3", n)
	}
	size := h.g.m.PartSeg
	h.close()
	// Open again before any Update: the record says file_records, so no other.
	h = newHarnessSized(t, dir, 64<<10)
	defer h.close()
	if h.g.m.PartSeg != size || !h.g.m.FileRecords {
		t.Fatalf("a second Open before any Update: the segment went from %d to %d bytes, file_records %v; want no new record", size, h.g.m.PartSeg, h.g.m.FileRecords)
	}
	a.h = h
	a.addFile(4, 1)
	if !storedMeta(t, h).FileRecords {
		t.Fatal("the commit after that Open did not record file_records")
	}
}

// lastRecordFiles returns how many file entries the last recIndex record of g's
// current part carries.
func lastRecordFiles(t *testing.T, h *harness) int {
	t.Helper()
	b, err := os.ReadFile(h.g.partPath(h.g.m.File, len(h.g.m.PartStarts)))
	if err != nil {
		t.Fatal(err)
	}
	files := -1
	for off := 0; off+recordHeaderLen <= len(b); {
		hd, err := parseRecordHeader(b[off : off+recordHeaderLen])
		if err != nil {
			t.Fatalf("record at %d: %v", off, err)
		}
		payload := b[off+recordHeaderLen : off+recordHeaderLen+int(hd.Len)]
		if hd.Type == recIndex {
			var rr redoRecord
			if err := json.Unmarshal(payload, &rr); err != nil {
				t.Fatal(err)
			}
			files = len(rr.Files)
		}
		off += recordHeaderLen + int(hd.Len)
	}
	return files
}
