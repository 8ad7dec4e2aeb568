package statemachine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// groupKeys returns every index entry of the group but its meta, as "key=value".
func groupKeys(t *testing.T, st *Store, gid uint64) []string {
	t.Helper()
	it, err := st.db.NewIter(&pebble.IterOptions{LowerBound: groupPrefix(gid), UpperBound: groupEnd(gid)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []string
	for it.First(); it.Valid(); it.Next() {
		if bytes.Equal(it.Key(), metaKey(gid)) {
			continue
		}
		out = append(out, fmt.Sprintf("%x=%x", it.Key(), it.Value()))
	}
	return out
}

// loseIndexAfter runs more, then replaces the index with a copy taken before more
// ran: the index has lost every commit more made, as a crash before the index's
// unsynced WAL reached the disk would. The segments keep everything (they were
// synced). It returns the index and keys the group had before the loss.
func loseIndexAfter(t *testing.T, h **harness, dir string, size uint64, more func(h *harness)) (uint64, []string, Tail) {
	t.Helper()
	hh := *h
	if err := hh.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(t.TempDir(), "ckpt")
	if err := hh.store.db.Checkpoint(ckpt); err != nil {
		t.Fatal(err)
	}
	more(hh)
	if err := hh.g.Sync(); err != nil {
		t.Fatal(err)
	}
	index, keys := hh.index, groupKeys(t, hh.store, hh.g.id)
	tail, _ := hh.g.Tail()
	hh.close()
	if err := os.RemoveAll(filepath.Join(dir, "index")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(ckpt, filepath.Join(dir, "index")); err != nil {
		t.Fatal(err)
	}
	*h = newHarnessSized(t, dir, size)
	return index, keys, tail
}

// TestRedoRollsIndexForward: a Sync makes only the segments durable; an index that
// lost its unsynced commits is rolled forward from the segments' recIndex records to
// exactly the entries commit wrote, across segment parts, file rotations, a
// transaction split over several entries, one still open, and rejected entries.
func TestRedoRollsIndexForward(t *testing.T) {
	const size = 16 << 10
	dir := t.TempDir()
	h := newHarnessSized(t, dir, size)
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{}), txn(gt(1), 100)}})
	seq := uint64(1)

	index, keys, tail := loseIndexAfter(t, &h, dir, size, func(h *harness) {
		for i := 0; i < 30; i++ {
			var items []Item
			prev := seq
			if i%10 == 9 {
				items = append(items, newFile(fmt.Sprintf("m.%06d", i), nil))
			}
			for k := 0; k < 1+i%4; k++ {
				seq++
				items = append(items, txn(gt(seq), 500+i*300))
			}
			h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items})
			if i == 12 { // rejected entries change nothing but the applied index
				if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{txn(gt(99), 1)}}).Encode()); r.Value != ResultRejected {
					t.Fatal("misplaced proposal accepted")
				}
			}
		}
		// A transaction in three pieces, then one left open.
		seq++
		ev := txnEvents(gt(seq), 40000)
		cut1, cut2 := len(gtidEv(gt(seq))), len(ev)-len(binlog.NewXID(testServer, seq, true))
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), First: true, Events: ev[:cut1]}}}})
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), Events: ev[cut1:cut2]}}}})
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), Last: true, Events: ev[cut2:]}}}})
		seq++
		open := txnEvents(gt(seq), 30000)
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), First: true, Events: open[:cut1]}}}})
	})
	defer func() { h.close() }()

	if h.index != index {
		t.Fatalf("Open returned applied index %d, want %d (the index was not rolled forward)", h.index, index)
	}
	got, _ := h.g.Tail()
	if !reflect.DeepEqual(got, tail) {
		t.Fatalf("tail after redo\n%+v\nwant\n%+v", got, tail)
	}
	if after := groupKeys(t, h.store, h.g.id); !reflect.DeepEqual(after, keys) {
		d := firstDiff(after, keys)
		t.Fatalf("redo wrote %d index entries, commit had written %d (first difference at %d: %s vs %s)", len(after), len(keys), d, after[d], keys[d])
	}
	// The open transaction continues where it was left.
	open := txnEvents(gt(seq), 30000)
	cut1 := len(gtidEv(gt(seq)))
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), Last: true, Events: open[cut1:]}}}})
	if n := countTxns(t, readAll(t, h.g, Start{File: 1, Served: 4})); n != seq {
		t.Fatalf("read %d transactions, want %d", n, seq)
	}
}

// TestRedoStopsAtTornUpdate: an Update whose records were cut short is not rolled
// forward; Open returns the last complete Update and drops the torn tail.
func TestRedoStopsAtTornUpdate(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir)
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{}), txn(gt(1), 100)}})
	var wantIndex uint64
	var wantTail Tail
	_, _, _ = loseIndexAfter(t, &h, dir, DefaultSegmentSize, func(h *harness) {
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{txn(gt(2), 100)}})
		wantIndex = h.index
		wantTail, _ = h.g.Tail()
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{txn(gt(3), 5000)}})
		// Tear the last Update: its recIndex record and part of its transaction.
		path := h.g.segPath(1)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, st.Size()-600); err != nil {
			t.Fatal(err)
		}
	})
	defer func() { h.close() }()
	if h.index != wantIndex {
		t.Fatalf("Open returned applied index %d, want %d", h.index, wantIndex)
	}
	if got, _ := h.g.Tail(); got.Ordinal != 2 || got.SegSize != wantTail.SegSize || got.State.String() != wantTail.State.String() {
		t.Fatalf("tail %+v, want %+v", got, wantTail)
	}
	// Raft replays the lost entry; it applies as before.
	h.index = wantIndex
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{txn(gt(3), 5000)}})
	if recs := readAll(t, h.g, Start{File: 1, Served: 4}); len(recs) != 4 {
		t.Fatalf("%d records after replay, want header and 3 transactions", len(recs))
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// FuzzRedo feeds arbitrary bytes to Open's roll-forward as the segment tail beyond
// what the index holds: Open either refuses with an error or yields a state that is
// readable end to end, gap-free and at least what the index held.
func FuzzRedo(f *testing.F) {
	base := f.TempDir()
	h := newHarness(f, base)
	st := h.store
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{}), txn(gt(1), 100), txn(gt(2), 300)}})
	if err := st.db.LogData(nil, pebble.Sync); err != nil {
		f.Fatal(err)
	}
	ckpt := filepath.Join(f.TempDir(), "ckpt")
	if err := st.db.Checkpoint(ckpt); err != nil {
		f.Fatal(err)
	}
	v, closer, err := st.db.Get(metaKey(5))
	if err != nil {
		f.Fatal(err)
	}
	var m meta
	err = json.Unmarshal(v, &m)
	closer.Close()
	if err != nil {
		f.Fatal(err)
	}
	seq := uint64(2)
	for i := 0; i < 3; i++ {
		seq++
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{txn(gt(seq), 200*i)}})
	}
	seg := h.g.segPath(1)
	h.g.Sync()
	h.close()
	all, err := os.ReadFile(seg)
	if err != nil {
		f.Fatal(err)
	}
	valid := all[m.PartSeg:]
	if err := os.Truncate(seg, int64(m.PartSeg)); err != nil {
		f.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(base, "index")); err != nil {
		f.Fatal(err)
	}
	if err := os.Rename(ckpt, filepath.Join(base, "index")); err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	flipped := append([]byte(nil), valid...)
	flipped[len(flipped)/3] ^= 4
	f.Add(flipped)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		if err := os.CopyFS(dir, os.DirFS(base)); err != nil {
			t.Fatal(err)
		}
		sf, err := os.OpenFile(filepath.Join(dir, "groups", "5", "000001.seg"), os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		sf.Write(tail)
		sf.Close()
		st, err := Open(dir, discardLog())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		g := st.NewGroup(5, 1).(*Group)
		if _, err := g.Open(nil); err != nil {
			return // refused with an error: acceptable for garbage
		}
		defer g.Close()
		tl, _ := g.Tail()
		if bytes.Equal(tail, valid) && tl.Ordinal != seq {
			t.Fatalf("the intact tail rolled forward to %d transactions, want %d", tl.Ordinal, seq)
		}
		if tl.Ordinal < 2 {
			t.Fatalf("redo lost what the index held: %d transactions", tl.Ordinal)
		}
		if n := countTxns(t, readAll(t, g, Start{File: 1, Served: 4})); n != tl.Ordinal {
			t.Fatalf("index says %d transactions, segments hold %d", tl.Ordinal, n)
		}
	})
}

// TestRebuildWhenIndexIsAhead: a power loss can leave the index's unsynced WAL on
// disk while segment bytes it describes are gone. Open rebuilds the index from every
// segment held, back to the last complete batch the segments have, with exactly the
// entries commit had written then (purged files included).
func TestRebuildWhenIndexIsAhead(t *testing.T) {
	const size = 16 << 10
	dir := t.TempDir()
	h := newHarnessSized(t, dir, size)
	defer func() { h.close() }()
	ep := h.claim()
	seq := uint64(0)
	appendTxns := func(n, rows int, rotate bool) {
		var items []Item
		prev := seq
		if rotate {
			items = append(items, newFile(fmt.Sprintf("m.%06d", seq), nil))
		}
		for i := 0; i < n; i++ {
			seq++
			items = append(items, txn(gt(seq), rows))
		}
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items})
	}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{})}})
	for i := 0; i < 12; i++ {
		appendTxns(3, 2000, i%4 == 3)
	}
	if r := h.apply(EncodePurge(2)); r.Value != ResultOK {
		t.Fatalf("purge rejected: %s", r.Data)
	}
	appendTxns(2, 3000, false)
	// What a power loss now would keep: the segments up to here, synced.
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	indexA, tailA, keysA := h.index, func() Tail { tl, _ := h.g.Tail(); return tl }(), groupKeys(t, h.store, h.g.id)
	curFile, curPart := tailA.File, len(tailA.PartStarts)
	st, err := os.Stat(h.g.partPath(curFile, curPart))
	if err != nil {
		t.Fatal(err)
	}
	keep := st.Size()
	// Later batches reach the index (its WAL written back) but not the disk's segments.
	for i := 0; i < 6; i++ {
		appendTxns(2, 4000, i == 3)
	}
	if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	h.close()
	entries, _ := os.ReadDir(h.g.dir)
	for _, e := range entries {
		no, part, ok := parseSegName(e.Name())
		if ok && (no > curFile || no == curFile && part > curPart) {
			os.Remove(filepath.Join(h.g.dir, e.Name()))
		}
	}
	if err := os.Truncate(h.g.partPath(curFile, curPart), keep); err != nil {
		t.Fatal(err)
	}

	h = newHarnessSized(t, dir, size)
	if h.index != indexA {
		t.Fatalf("Open returned applied index %d, want %d (the last batch the segments hold)", h.index, indexA)
	}
	if got, _ := h.g.Tail(); !reflect.DeepEqual(got, tailA) {
		t.Fatalf("tail after rebuild\n%+v\nwant\n%+v", got, tailA)
	}
	if after := groupKeys(t, h.store, h.g.id); !reflect.DeepEqual(after, keysA) {
		d := firstDiff(after, keysA)
		t.Fatalf("rebuild wrote %d index entries, commit had written %d (first difference at %d)", len(after), len(keysA), d)
	}
	// Raft replays the lost entries; the group goes on from there.
	seq = tailA.Ordinal
	appendTxns(1, 100, false)
	if tl, _ := h.g.Tail(); tl.Ordinal != seq {
		t.Fatalf("after the rebuild the group holds %d transactions, want %d", tl.Ordinal, seq)
	}
	if n := len(readAll(t, h.g, Start{File: tailA.FirstFile, Served: 4})); n == 0 {
		t.Fatal("nothing readable after the rebuild")
	}
}

// TestRebuildWhenIndexClaimsAHole: pages are written back in any order, so a power
// loss can keep a part at its full size with a hole of zeros where unsynced records
// were, while the index's WAL that claims them survives. Open must see the hole (the
// part's size does not show it) and rebuild to the last complete batch before it:
// every record it then serves verifies, and nothing a Sync covered is lost.
func TestRebuildWhenIndexClaimsAHole(t *testing.T) {
	const size = 1 << 20 // one part holds all: only content can show the hole
	dir := t.TempDir()
	h := newHarnessSized(t, dir, size)
	defer func() { h.close() }()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{})}})
	seq := uint64(0)
	appendTxns := func(n int) {
		prev := seq
		var items []Item
		for i := 0; i < n; i++ {
			seq++
			items = append(items, txn(gt(seq), 500))
		}
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items})
	}
	for i := 0; i < 4; i++ {
		appendTxns(3)
	}
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	synced, _ := h.g.Tail()
	path := h.g.partPath(synced.File, len(synced.PartStarts))
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	syncedSize := st.Size()
	for i := 0; i < 20; i++ {
		appendTxns(3)
	}
	full, _ := h.g.Tail()
	if len(full.PartStarts) != len(synced.PartStarts) {
		t.Fatal("the part rolled: the test wants one part")
	}
	// A commit with Sync carries the group's NoSync commits to the disk.
	if err := h.store.db.LogData(nil, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	h.close()
	// A 4 KiB block in the middle of what was written after the Sync never reached
	// the disk: zeros, the file's size unchanged.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	end, _ := f.Seek(0, 2)
	hole := (syncedSize + (end-syncedSize)/2) &^ 4095
	if hole < syncedSize {
		t.Fatalf("hole at %d is inside the synced %d bytes", hole, syncedSize)
	}
	if _, err := f.WriteAt(make([]byte, 4096), hole); err != nil {
		t.Fatal(err)
	}
	f.Close()

	h = newHarnessSized(t, dir, size)
	got, _ := h.g.Tail()
	if got.Ordinal < synced.Ordinal || got.Ordinal >= full.Ordinal {
		t.Fatalf("after the hole the group opened with %d transactions, want at least the %d synced and fewer than the %d written", got.Ordinal, synced.Ordinal, full.Ordinal)
	}
	if n := len(readAll(t, h.g, Start{File: got.FirstFile, Served: 4})); n == 0 {
		t.Fatal("nothing readable after the rebuild")
	}
	// Raft replays the lost entries; the group goes on from there.
	seq = got.Ordinal
	appendTxns(1)
	if tl, _ := h.g.Tail(); tl.Ordinal != seq {
		t.Fatalf("after the rebuild the group holds %d transactions, want %d", tl.Ordinal, seq)
	}
}

// TestDroppedPiecesKeepTheSyncedPlace: a claim drops an unfinished transaction's
// pieces and writes a new redo record where they began, so a place known fsynced
// past that point could fall inside the new record; Open would then read from the
// middle of a record, take the segment for torn and rebuild the whole index for
// nothing (or fail, for files an older Flotilla wrote). Each shape of the drop must
// reopen without a rebuild. (The claim's own durable commits refresh the place
// today, so this passes without dropPending's clamp too: it guards the pair.)
func TestDroppedPiecesKeepTheSyncedPlace(t *testing.T) {
	for _, syncAfterPiece := range []bool{false, true} {
		for _, pieceBytes := range []int{30, 300, 3000} {
			dir := t.TempDir()
			h := newHarnessSized(t, dir, 1<<20)
			ep := h.claim()
			h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("m.000001", binlog.Position{}), txn(gt(1), 100)}})
			if err := h.g.Sync(); err != nil {
				t.Fatal(err)
			}
			ev := txnEvents(gt(2), pieceBytes)
			h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: ev[:len(ev)-31]}}}})
			if syncAfterPiece {
				if err := h.g.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			h.claim() // drops the piece
			h.close()
			var logs bytes.Buffer
			st, err := OpenFS(vfs.Default, dir, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			st.SetSegmentSize(1 << 20)
			g := st.NewGroup(5, 1).(*Group)
			if _, err := g.Open(nil); err != nil {
				t.Fatalf("piece of %d bytes, sync after it %v: reopen: %v", pieceBytes, syncAfterPiece, err)
			}
			if strings.Contains(logs.String(), "rebuilding") || strings.Contains(logs.String(), "torn") {
				t.Fatalf("piece of %d bytes, sync after it %v: the reopen rebuilt the index:\n%s", pieceBytes, syncAfterPiece, logs.String())
			}
			g.Close()
			st.Close()
		}
	}
}
