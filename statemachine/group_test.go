package statemachine

import (
	"bytes"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

const testServer = 11

// ev builds a checksummed event of the given type with a body of n bytes.
func ev(typ byte, n int) []byte { return binlog.NewOpaque(typ, testServer, n, true) }

func gtidEv(g binlog.GTID) []byte { return binlog.NewGTIDEvent(g, 0, true) }

func txnEvents(g binlog.GTID, rowBytes int) []byte {
	var b []byte
	b = append(b, gtidEv(g)...)
	b = append(b, ev(binlog.TableMapEvent, 30)...)
	b = append(b, ev(23, rowBytes)...)
	b = append(b, binlog.NewXID(testServer, g.Seq, true)...)
	return b
}

type harness struct {
	t     testing.TB
	dir   string
	store *Store
	g     *Group
	index uint64
}

func newHarness(t testing.TB, dir string) *harness {
	t.Helper()
	return newHarnessSized(t, dir, DefaultSegmentSize)
}

// newHarnessSized opens a store whose segment parts roll at size bytes.
func newHarnessSized(t testing.TB, dir string, size uint64) *harness {
	t.Helper()
	return newHarnessOn(t, vfs.Default, dir, size)
}

// newHarnessOn opens the store on the filesystem fs; setup runs before the group
// opens.
func newHarnessOn(t testing.TB, fs vfs.FS, dir string, size uint64, setup ...func(*Store)) *harness {
	t.Helper()
	st, err := OpenFS(fs, dir, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(st)
	}
	st.SetSegmentSize(size)
	g := st.NewGroup(5, 1).(*Group)
	idx, err := g.Open(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, dir: dir, store: st, g: g, index: idx}
}

func (h *harness) close() {
	h.g.Close()
	h.store.Close()
}

func (h *harness) apply(cmd []byte) sm.Result {
	h.t.Helper()
	h.index++
	out, err := h.g.Update([]sm.Entry{{Index: h.index, Cmd: cmd}})
	if err != nil {
		h.t.Fatal(err)
	}
	return out[0].Result
}

func (h *harness) claim() uint64 {
	r := h.apply(EncodeClaimEpoch())
	if r.Value != ResultOK {
		h.t.Fatalf("claim rejected: %s", r.Data)
	}
	return binary.BigEndian.Uint64(r.Data)
}

func (h *harness) mustAppend(a *Append) {
	h.t.Helper()
	if r := h.apply(a.Encode()); r.Value != ResultOK {
		h.t.Fatalf("append rejected: %s", r.Data)
	}
}

func newFile(name string, base binlog.Position) Item {
	return Item{NewFile: &NewFile{ServerID: testServer, UpstreamFile: name, FDE: binlog.NewFDE(testServer, "10.11.6-MariaDB-log", true), BaseState: base}}
}

func txn(g binlog.GTID, rowBytes int) Item {
	return Item{Txn: &Txn{GTID: g, First: true, Last: true, Events: txnEvents(g, rowBytes)}}
}

// readAll reads every committed record and checks that events are contiguous and
// correctly placed: each log_pos is the event's end in its served file and every
// checksum verifies.
func readAll(t *testing.T, g *Group, s Start) []Record {
	t.Helper()
	var recs []Record
	eachRecord(t, g, s, func(r Record) {
		r.Payload = bytes.Clone(r.Payload)
		recs = append(recs, r)
	})
	return recs
}

// eachRecord is readAll without keeping the records: fn sees each whole record (a
// transaction's pieces joined), checked as readAll checks them, its payload valid only
// during the call. The crash test reads its whole store after every kill.
func eachRecord(t *testing.T, g *Group, s Start, fn func(Record)) {
	t.Helper()
	c, err := g.NewCursor(s)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tail, _ := g.Tail()
	var open *Record // a transaction whose later pieces are still to come
	for {
		r, err := c.Next(tail)
		if errors.Is(err, ErrAtTail) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		// Join a transaction's pieces: the tests reason about whole transactions.
		// The cursor's payload is valid only until the next call.
		joined := r.Continued
		if joined {
			if open == nil {
				t.Fatalf("file %d at %d: a continuation piece follows no open transaction", r.File, r.Pos)
			}
			open.Payload = append(open.Payload, r.Payload...)
			open.Type, open.Continues = r.Type, r.Continues
			r, open = *open, nil
		}
		if r.Continues {
			if !joined { // a first piece holds the cursor's bytes; a joined one, its own
				r.Payload = bytes.Clone(r.Payload)
			}
			open = &r
			continue
		}
		pos := r.Pos
		if err := binlog.Split(r.Payload, func(e []byte) error {
			h, err := binlog.ParseHeader(e)
			if err != nil {
				return err
			}
			pos += uint64(len(e))
			if uint64(h.LogPos) != pos {
				t.Fatalf("file %d: event type %d has log_pos %d, want %d", r.File, h.Type, h.LogPos, pos)
			}
			return binlog.VerifyChecksum(e)
		}); err != nil {
			t.Fatal(err)
		}
		fn(r)
	}
}

// countTxns checks that the transactions among recs are 1, 2, 3, ... in order and
// returns how many there are.
func countTxns(t testing.TB, recs []Record) uint64 {
	t.Helper()
	var n uint64
	for _, r := range recs {
		if r.Type == recTxn {
			n++
			if g, _ := TxnGTID(r.Payload); g.Seq != n {
				t.Fatalf("transaction %d read as %v", n, g)
			}
		}
	}
	return n
}

// discardLog is the logger of stores under test; FLOTILLA_TEST_LOG=1 sends their logs,
// debug level included, to stderr.
func discardLog() *slog.Logger {
	if os.Getenv("FLOTILLA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func gt(seq uint64) binlog.GTID { return binlog.GTID{Domain: 0, Server: testServer, Seq: seq} }

func TestAppendServeAndReopen(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir)
	ep := h.claim()
	base := binlog.Position{0: gt(10)}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 0, Items: []Item{newFile("mariadb-bin.000007", base), txn(gt(11), 100), txn(gt(12), 5000)}})

	// Fencing: a stale epoch and a proposal that does not follow the tail are refused
	// and leave no trace.
	if r := h.apply((&Append{Epoch: ep - 1, PrevOrdinal: 2, Items: []Item{txn(gt(13), 10)}}).Encode()); r.Value != ResultRejected {
		t.Fatal("stale epoch accepted")
	}
	if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{txn(gt(12), 10)}}).Encode()); r.Value != ResultRejected {
		t.Fatal("duplicate proposal accepted")
	}
	tail, _ := h.g.Tail()
	if tail.Ordinal != 2 || tail.State.String() != "0-11-12" {
		t.Fatalf("tail after rejections: %+v", tail)
	}

	// A transaction split over two proposals, then a new master file.
	big := txnEvents(gt(13), 200000)
	half := len(gtidEv(gt(13))) + len(ev(binlog.TableMapEvent, 30))
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{{Txn: &Txn{GTID: gt(13), First: true, Events: big[:half]}}}})
	if tl, _ := h.g.Tail(); tl.Ordinal != 2 {
		t.Fatal("an incomplete transaction must not be visible")
	}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{{Txn: &Txn{GTID: gt(13), Last: true, Events: big[half:]}}}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 3, Items: []Item{newFile("mariadb-bin.000008", nil), txn(gt(14), 10)}})

	files, err := h.g.Files()
	if err != nil || len(files) != 2 || files[0].Name != "flotilla-bin.000001" {
		t.Fatalf("files = %v, %v", files, err)
	}
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	// header, 3 txns, rotate, header, 1 txn
	var types []byte
	for _, r := range recs {
		types = append(types, r.Type)
	}
	if !bytes.Equal(types, []byte{recHeader, recTxn, recTxn, recTxn, recRotate, recHeader, recTxn}) {
		t.Fatalf("record types %v", types)
	}
	if files[0].Size != recs[4].Pos+uint64(len(recs[4].Payload)) {
		t.Fatalf("closed file size %d does not end at its rotate", files[0].Size)
	}
	gl := recs[5].Payload[len(binlog.NewFDE(testServer, "10.11.6-MariaDB-log", true)):]
	if p, err := binlog.ParseGTIDList(gl, true); err != nil || p.String() != "0-11-13" {
		t.Fatalf("second file Gtid_list = %v, %v", p, err)
	}

	// Locate: after 0-11-12 the next transaction is 13; the oldest position is the
	// base state; unknown, future and too-old GTIDs are refused with reasons.
	s, err := h.g.Locate(binlog.Position{0: gt(12)})
	if err != nil || s.File != 1 || s.Served != recs[3].Pos {
		t.Fatalf("locate 0-11-12 = %+v, %v (want pos %d)", s, err, recs[3].Pos)
	}
	if s, err := h.g.Locate(base); err != nil || s.Served != 4 || s.File != 1 {
		t.Fatalf("locate base = %+v, %v", s, err)
	}
	for _, bad := range []binlog.Position{{0: gt(99)}, {0: gt(3)}, {0: {Domain: 0, Server: 99, Seq: 12}}, {}} {
		if _, err := h.g.Locate(bad); !errors.Is(err, ErrPosition) {
			t.Fatalf("locate %v: want ErrPosition, got %v", bad, err)
		}
	}
	if s, err := h.g.LocateFile("flotilla-bin.000001", recs[2].Pos); err != nil || s.Served != recs[2].Pos {
		t.Fatalf("locate file = %+v, %v", s, err)
	}
	// A position inside a record resolves to the record plus the bytes to skip (the
	// dump checks that they end on an event boundary).
	if s, err := h.g.LocateFile("flotilla-bin.000001", recs[2].Pos+40); err != nil || s.Served != recs[2].Pos || s.Skip != 40 {
		t.Fatalf("locate inside a transaction = %+v, %v", s, err)
	}
	if _, err := h.g.LocateFile("flotilla-bin.000002", 1<<40); !errors.Is(err, ErrPosition) {
		t.Fatalf("a position past the end must be refused, got %v", err)
	}
	if _, err := h.g.LocateFile("mariadb-bin.000001", 4); !errors.Is(err, ErrPosition) {
		t.Fatalf("a file Flotilla does not serve must be refused, got %v", err)
	}

	// Reopen after a torn write: garbage past the applied tail is truncated.
	before := readAll(t, h.g, Start{File: 1, Served: 4})
	h.close()
	f, err := os.OpenFile(h.g.segPath(2), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("torn record"))
	f.Close()
	h2 := newHarness(t, dir)
	defer h2.close()
	if h2.index != h.index {
		t.Fatalf("reopened at index %d, want %d", h2.index, h.index)
	}
	after := readAll(t, h2.g, Start{File: 1, Served: 4})
	if len(after) != len(before) || !bytes.Equal(after[6].Payload, before[6].Payload) {
		t.Fatal("state after reopen differs")
	}
}

func TestClaimDropsIncompleteTransaction(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: gtidEv(gt(2))}}}})
	ep2 := h.claim()
	// The old epoch's continuation is refused; the new syncer restarts transaction 2.
	if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), Last: true, Events: ev(binlog.XIDEvent, 8)}}}}).Encode()); r.Value != ResultRejected {
		t.Fatal("continuation from an old epoch accepted")
	}
	h.mustAppend(&Append{Epoch: ep2, PrevOrdinal: 1, Items: []Item{txn(gt(2), 10)}})
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	if len(recs) != 3 {
		t.Fatalf("%d records, want header + 2 transactions", len(recs))
	}
	if g, ok := TxnGTID(recs[2].Payload); !ok || g != gt(2) {
		t.Fatalf("last transaction is %v", g)
	}
}

func TestCorruptRecordIsReported(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 1000), txn(gt(2), 10)}})
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	f, _ := os.OpenFile(h.g.segPath(1), os.O_RDWR, 0)
	off := int64(len(recs[0].Payload)) + 2*recordHeaderLen + 500
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x40
	f.WriteAt(b, off)
	f.Close()
	c, _ := h.g.NewCursor(Start{File: 1, Served: 4})
	defer c.Close()
	tail, _ := h.g.Tail()
	if _, err := c.Next(tail); err != nil {
		t.Fatal(err)
	}
	_, err := c.Next(tail)
	if !errors.Is(err, ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte("flotilla-bin.000001")) {
		t.Fatalf("want a corruption error naming the file, got %v", err)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := newHarness(t, t.TempDir())
	defer src.close()
	ep := src.claim()
	src.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)}), txn(gt(1), 300)}})
	src.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{newFile("m.2", nil), txn(gt(2), 70000)}})
	dst := snapshotInto(t, src, newHarness(t, t.TempDir()))
	defer dst.close()
	a, b := readAll(t, src.g, Start{File: 1, Served: 4}), readAll(t, dst.g, Start{File: 1, Served: 4})
	if len(a) != len(b) {
		t.Fatalf("%d records restored, want %d", len(b), len(a))
	}
	for i := range a {
		if !bytes.Equal(a[i].Payload, b[i].Payload) || a[i].Pos != b[i].Pos {
			t.Fatalf("record %d differs after restore", i)
		}
	}
	if s, err := dst.g.Locate(binlog.Position{0: gt(1)}); err != nil || s.File != 1 {
		t.Fatalf("index not restored: %+v %v", s, err)
	}
}

// TestSnapshotOverOlderState: a replica that already holds files takes a snapshot
// taken just after a rotation (the new file has no parts started yet). Found by the
// chaos suite: the meta was decoded over the old one and kept its part starts, the
// opened group took the new file for torn, rolled back one entry and then refused
// every later append, silently.
func TestSnapshotOverOlderState(t *testing.T) {
	src := newHarnessSized(t, t.TempDir(), 4096)
	defer src.close()
	ep := src.claim()
	src.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{0: gt(0)})}})
	for i := 1; i <= 40; i++ {
		src.mustAppend(&Append{Epoch: ep, PrevOrdinal: uint64(i - 1), Items: []Item{txn(gt(uint64(i)), 300)}})
	}
	dst := snapshotInto(t, src, newHarnessSized(t, t.TempDir(), 4096))
	defer dst.close()
	src.mustAppend(&Append{Epoch: ep, PrevOrdinal: 40, Items: []Item{newFile("m.2", nil)}})
	snapshotInto(t, src, dst)
	if dst.g.m.Applied != src.g.m.Applied || dst.g.m.File != src.g.m.File {
		t.Fatalf("restored at entry %d in file %d, the snapshot is at %d in file %d", dst.g.m.Applied, dst.g.m.File, src.g.m.Applied, src.g.m.File)
	}
	// Both apply what comes next alike.
	dst.index = src.index
	next := &Append{Epoch: ep, PrevOrdinal: 40, Items: []Item{txn(gt(41), 300)}}
	src.mustAppend(next)
	dst.mustAppend(next)
	a, b := readAll(t, src.g, Start{File: 1, Served: 4}), readAll(t, dst.g, Start{File: 1, Served: 4})
	if len(a) != len(b) || !bytes.Equal(a[len(a)-1].Payload, b[len(b)-1].Payload) {
		t.Fatalf("%d records after the restore, want %d", len(b), len(a))
	}
}

// TestSequencedFenceCatchesADroppedPiece: pieces of one transaction leave the
// ordinal alone, so the ordinal cannot tell that a middle piece went missing when
// several proposals are in flight. The sequence does: after a gap, every later
// proposal of the epoch is rejected, and a new epoch starts the sequence over.
func TestSequencedFenceCatchesADroppedPiece(t *testing.T) {
	h := newHarness(t, t.TempDir())
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Sequenced: true, Seq: 0, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
	// Transaction 2 in three pieces, each ending at an event boundary; raft drops the
	// middle one (Seq 2), and the last (Seq 3) still follows ordinal 1.
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Sequenced: true, Seq: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: gtidEv(gt(2))}}}})
	last := &Append{Epoch: ep, PrevOrdinal: 1, Sequenced: true, Seq: 3, Items: []Item{{Txn: &Txn{GTID: gt(2), Last: true, Events: binlog.NewXID(testServer, 2, true)}}}}
	if r := h.apply(last.Encode()); r.Value != ResultRejected {
		t.Fatal("a piece after a dropped one was accepted: the transaction lost its rows")
	}
	// The group still waits for Seq 2: the middle piece, proposed again in order,
	// gets in, and a second proposal with its number does not.
	if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 1, Sequenced: true, Seq: 2, Items: []Item{{Txn: &Txn{GTID: gt(2), Events: ev(23, 40)}}}}).Encode()); r.Value != ResultOK {
		t.Fatalf("the dropped piece itself, proposed again in order, was rejected: %s", r.Data)
	}
	if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 1, Sequenced: true, Seq: 2, Items: []Item{{Txn: &Txn{GTID: gt(2), Last: true, Events: binlog.NewXID(testServer, 2, true)}}}}).Encode()); r.Value != ResultRejected {
		t.Fatal("a proposal repeating a sequence number was accepted")
	}
	// A new epoch drops the open pieces and starts the sequence over.
	ep2 := h.claim()
	if r := h.apply((&Append{Epoch: ep2, PrevOrdinal: 1, Sequenced: true, Seq: 1, Items: []Item{txn(gt(2), 10)}}).Encode()); r.Value != ResultRejected {
		t.Fatal("a new epoch's first proposal was accepted with sequence 1")
	}
	h.mustAppend(&Append{Epoch: ep2, PrevOrdinal: 1, Sequenced: true, Seq: 0, Items: []Item{txn(gt(2), 10)}})
	h.mustAppend(&Append{Epoch: ep2, PrevOrdinal: 2, Sequenced: true, Seq: 1, Items: []Item{txn(gt(3), 10)}})
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	if n := countTxns(t, recs); n != 3 {
		t.Fatalf("%d transactions held, want 3", n)
	}
	// The group's sequence survives a reopen (it is in the meta the index stores).
	h.close()
	h2 := newHarness(t, h.dir)
	defer h2.close()
	if r := h2.apply((&Append{Epoch: ep2, PrevOrdinal: 3, Sequenced: true, Seq: 1, Items: []Item{txn(gt(4), 10)}}).Encode()); r.Value != ResultRejected {
		t.Fatal("after a reopen, a repeated sequence number was accepted")
	}
	h2.mustAppend(&Append{Epoch: ep2, PrevOrdinal: 3, Sequenced: true, Seq: 2, Items: []Item{txn(gt(4), 10)}})
}

// TestSnapshotOfOpenPiecesMeetsClaim: a snapshot taken while a transaction's pieces
// are open holds them (a replica restored from it accepts the next piece as its
// peers do). A stream runs beside Update, so a new syncer's ClaimEpoch may truncate
// those pieces while they are copied: the stream must then be aborted (dragonboat
// sends it again), not end short, nor fail in a way that stops the node.
func TestSnapshotOfOpenPiecesMeetsClaim(t *testing.T) {
	src := newHarness(t, t.TempDir())
	defer src.close()
	ep := src.claim()
	src.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
	whole := txnEvents(gt(2), 40000)
	tail := len(whole) - len(binlog.NewXID(testServer, 2, true))
	src.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Events: whole[:tail]}}}})

	// Restored from it, a replica takes the last piece as its source does.
	dst := snapshotInto(t, src, newHarness(t, t.TempDir()))
	defer dst.close()
	last := &Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), Last: true, Events: whole[tail:]}}}}
	dst.index = src.index
	for _, h := range []*harness{src, dst} {
		if r := h.apply(last.Encode()); r.Value != ResultOK {
			t.Fatalf("the last piece was rejected: %s", r.Data)
		}
	}
	if a, b := readAll(t, src.g, Start{File: 1, Served: 4}), readAll(t, dst.g, Start{File: 1, Served: 4}); len(a) != 3 || len(b) != len(a) || !bytes.Equal(a[2].Payload, b[2].Payload) {
		t.Fatalf("source holds %d records, the restored replica %d: they differ", len(a), len(b))
	}

	// Pieces open again; a claim drops them between the snapshot's capture and its copy.
	whole3 := txnEvents(gt(3), 40000)
	src.mustAppend(&Append{Epoch: ep, PrevOrdinal: 2, Items: []Item{{Txn: &Txn{GTID: gt(3), First: true, Events: whole3[:len(whole3)-40]}}}})
	ctx, err := src.g.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	src.claim()
	if err := src.g.SaveSnapshot(ctx, io.Discard, nil); !errors.Is(err, sm.ErrSnapshotAborted) {
		t.Fatalf("a snapshot whose open pieces were dropped while it was copied ended with %v, want dragonboat's ErrSnapshotAborted", err)
	}
}

// FuzzDecodeCommand: raft entries are bytes from disk and peers; decoding must never
// panic, and what decodes must re-encode to the same bytes.
func FuzzDecodeCommand(f *testing.F) {
	f.Add(EncodeClaimEpoch())
	f.Add((&Append{Epoch: 3, PrevOrdinal: 9, Items: []Item{newFile("m.1", binlog.Position{0: gt(1)}), txn(gt(2), 10)}}).Encode())
	f.Add((&Append{Epoch: 3, PrevOrdinal: 9, Sequenced: true, Seq: 7, Items: []Item{txn(gt(2), 10)}}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, a, err := DecodeCommand(b)
		if err != nil || kind != KindAppend {
			return
		}
		if again := a.Encode(); !bytes.Equal(again, b) {
			// Varints have several encodings; decoding the re-encoding must agree.
			if _, a2, err := DecodeCommand(again); err != nil || len(a2.Items) != len(a.Items) || a2.Sequenced != a.Sequenced || a2.Seq != a.Seq {
				t.Fatalf("re-encoded command does not decode alike: %v", err)
			}
		}
	})
}

// FuzzRecordHeader: record headers are read from disk.
func FuzzRecordHeader(f *testing.F) {
	f.Add(appendRecord(nil, recTxn, 7, []byte("payload")))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseRecordHeader(b)
		if err != nil {
			return
		}
		if rest := b[recordHeaderLen:]; uint32(len(rest)) >= h.Len {
			_ = verifyRecord(b, h, rest[:h.Len])
		}
		_, _ = decodeTxnLoc(b)
	})
}

func TestPurge(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir)
	ep := h.claim()
	var seq uint64
	ord := uint64(0)
	for f := 1; f <= 4; f++ {
		items := []Item{newFile(fmt.Sprintf("m.%d", f), binlog.Position{0: gt(0)})}
		for i := 0; i < 3 && !(f == 4 && i > 0); i++ {
			seq++
			items = append(items, txn(gt(seq), 1000))
		}
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: ord, Items: items})
		ord = seq
	}
	// A slow replica still reading file 1 holds retention back.
	slow, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	keep, reason, err := h.g.PurgeTarget(Retention{MaxBytes: 1}, time.Now())
	if err != nil || keep != 1 || !strings.Contains(reason, "held back") {
		t.Fatalf("with a reader on file 1: keep %d (%q), %v", keep, reason, err)
	}
	slow.Close()
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxBytes: 1}, time.Now()); keep != 4 {
		t.Fatalf("size policy keeps from file %d, want 4 (the current file is never purged)", keep)
	}
	// The transactions are from 2023 by the master's clock, but the files were closed
	// just now: age counts from the later, as MySQL counts from a binlog's mtime.
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxAge: time.Hour}, time.Now().Add(30*time.Minute)); keep != 1 {
		t.Fatalf("age policy purged files closed half an hour ago (keep %d)", keep)
	}
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxAge: time.Hour}, time.Now().Add(2*time.Hour)); keep != 4 {
		t.Fatalf("age policy keeps from %d, want 4", keep)
	}
	// A file an older Flotilla closed (no closed_at) is judged by the master's clock.
	fi, err := h.g.store.fileInfo(h.g.id, 1)
	if err != nil || fi.ClosedAt == 0 {
		t.Fatalf("file 1's closed_at: %+v, %v", fi, err)
	}
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxAge: time.Hour}, time.Unix(1700000000, 0).Add(2*time.Hour)); keep != 1 {
		t.Fatalf("age policy purged files closed in 2026 by 2023's clock (keep %d)", keep)
	}
	fi.ClosedAt = 0
	v, err := json.Marshal(fi)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.g.store.db.Set(fileKey(h.g.id, 1), v, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxAge: time.Hour}, time.Unix(1700000000, 0).Add(2*time.Hour)); keep != 2 {
		t.Fatalf("a file without closed_at is judged by its last transaction: keep %d, want 2", keep)
	}
	// A file closed before any transaction (no last_ts) goes by its closing.
	fi.LastTS, fi.ClosedAt = 0, 1700000000
	if v, err = json.Marshal(fi); err != nil {
		t.Fatal(err)
	}
	if err := h.g.store.db.Set(fileKey(h.g.id, 1), v, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if keep, _, _ := h.g.PurgeTarget(Retention{MaxAge: time.Hour}, time.Unix(1700000000, 0).Add(2*time.Hour)); keep != 2 {
		t.Fatalf("a file closed before any transaction, two hours ago: keep %d, want 2", keep)
	}

	if r := h.apply(EncodePurge(3)); r.Value != ResultOK {
		t.Fatalf("purge refused: %s", r.Data)
	}
	if r := h.apply(EncodePurge(5)); r.Value != ResultRejected {
		t.Fatal("purging the current file must be refused")
	}
	files, _ := h.g.Files()
	if len(files) != 2 || files[0].Name != FileName(3) {
		t.Fatalf("files after purge: %v", files)
	}
	// The raft index -> position index: entries of purged files are gone, later
	// ones point at their first record.
	for idx := uint64(1); idx <= h.index; idx++ {
		s, ok, err := h.g.PositionOfIndex(idx)
		if err != nil {
			t.Fatal(err)
		}
		if ok && s.File < 3 {
			t.Fatalf("raft entry %d still points into purged file %d", idx, s.File)
		}

	}
	if s, ok, _ := h.g.PositionOfIndex(5); !ok || s.File != 3 {
		t.Fatalf("the entry that started file 4 begins with file 3's Rotate, but maps to %+v (found %v)", s, ok)
	}
	if _, err := os.Stat(h.g.segPath(1)); !os.IsNotExist(err) {
		t.Fatal("segment of a purged file still exists")
	}
	_, err = h.g.Locate(binlog.Position{0: gt(2)})
	if !errors.Is(err, ErrPosition) || !strings.Contains(err.Error(), "oldest GTID still available is 0-11-7") {
		t.Fatalf("asking for purged history: %v", err)
	}
	if s, err := h.g.Locate(binlog.Position{0: gt(6)}); err != nil || s.File != 3 || s.Served != 4 {
		t.Fatalf("the position a kept file starts from must be served: %+v %v", s, err)
	}
	// At once: a purged file never comes back (a replica with a short read
	// timeout, go-mysql's, took the 10 s wait for a dead link).
	var pe *PositionError
	if _, err := h.g.LocateFile(FileName(2), 4); !errors.As(err, &pe) || !pe.Gone {
		t.Fatalf("a purged file must be refused as gone, got %v", err)
	}
	if _, err := h.g.LocateFile(FileName(9), 4); !errors.As(err, &pe) || pe.Gone {
		t.Fatalf("a file ahead of the tail may still come (not gone), got %v", err)
	}
	h.close()
	h2 := newHarness(t, dir)
	defer h2.close()
	if tl, _ := h2.g.Tail(); tl.FirstFile != 3 || tl.Ordinal != seq {
		t.Fatalf("after reopen: %+v", tl)
	}
	if recs := readAll(t, h2.g, Start{File: 3, Served: 4}); len(recs) != 7 {
		t.Fatalf("%d records in the kept files, want 7", len(recs))
	}
}

func TestCompressionIsTransparent(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir)
	ep := h.claim()
	var seq uint64
	addFile := func(f int) {
		items := []Item{newFile(fmt.Sprintf("m.%d", f), binlog.Position{0: gt(0)})}
		prev := seq
		for i := 0; i < 20; i++ {
			seq++
			items = append(items, txn(gt(seq), 20000))
		}
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items})
	}
	addFile(1)
	addFile(2)
	before := readAll(t, h.g, Start{File: 1, Served: 4})
	addFile(3)
	addFile(4)                         // files 1 and 2 now have a newer closed file: they get compressed
	if err := h.g.Sync(); err != nil { // once the segments closing them are durable
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, e1 := os.Stat(h.g.segPath(1) + zstSuffix)
		_, e2 := os.Stat(h.g.segPath(2))
		if e1 == nil && os.IsNotExist(e2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("files 1 and 2 were not compressed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	plain, comp := h.g.Compression()
	if plain == 0 || comp == 0 || comp >= plain {
		t.Fatalf("compression figures: %d plain bytes in %d", plain, comp)
	}
	after := readAll(t, h.g, Start{File: 1, Served: 4})
	for i := range before {
		if !bytes.Equal(before[i].Payload, after[i].Payload) || before[i].Pos != after[i].Pos {
			t.Fatalf("record %d reads differently once compressed", i)
		}
	}
	// A cursor reads a compressed file forward only: a read behind the decoder's
	// position would decompress it again from its start (quadratic in the file).
	fc, err := h.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	tail, _ := h.g.Tail()
	for fc.file == 1 {
		if _, err := fc.Next(tail); err != nil {
			t.Fatal(err)
		}
		if z, ok := fc.f.(*zstdSegment); ok && z.restarts > 0 {
			t.Fatalf("reading compressed file 1 restarted its decompression %d times", z.restarts)
		}
	}
	fc.Close()
	// Starting in the middle of a compressed file (a replica resuming there).
	s, err := h.g.Locate(binlog.Position{0: gt(7)})
	if err != nil || s.File != 1 {
		t.Fatalf("locate in a compressed file: %+v %v", s, err)
	}
	c, _ := h.g.NewCursor(s)
	tail, _ = h.g.Tail()
	r, err := c.Next(tail)
	c.Close()
	if g, _ := TxnGTID(r.Payload); err != nil || g != gt(8) {
		t.Fatalf("after 7 comes %v, %v", g, err)
	}
	// A snapshot taken from compressed segments restores the same bytes.
	dst := snapshotInto(t, h, newHarness(t, t.TempDir()))
	defer dst.close()
	if got := readAll(t, dst.g, Start{File: 1, Served: 4}); len(got) != len(after) || !bytes.Equal(got[5].Payload, after[5].Payload) {
		t.Fatal("snapshot of compressed segments differs")
	}
	h.close()
	h2 := newHarness(t, dir)
	defer h2.close()
	if p2, c2 := h2.g.Compression(); p2 != plain || c2 != comp {
		t.Fatalf("after reopen compression figures are %d/%d, were %d/%d", p2, c2, plain, comp)
	}
	// A flipped byte inside a compressed closed segment is reported, never served.
	zf, err := os.OpenFile(h2.g.segPath(1)+zstSuffix, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := zf.Stat()
	b := []byte{0}
	zf.ReadAt(b, st.Size()/2)
	b[0] ^= 0x04
	zf.WriteAt(b, st.Size()/2)
	zf.Close()
	c2, err := h2.g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	tail2, _ := h2.g.Tail()
	for {
		_, err := c2.Next(tail2)
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName(1)) {
			t.Fatalf("reading a damaged compressed segment: want a corruption error naming %s, got %v", FileName(1), err)
		}
		break
	}
}

func TestSegmentsRoll(t *testing.T) {
	dir := t.TempDir()
	h := newHarnessSized(t, dir, 8<<10)
	ep := h.claim()
	var seq uint64
	items := []Item{newFile("m.1", binlog.Position{0: gt(0)})}
	for i := 0; i < 30; i++ {
		seq++
		items = append(items, txn(gt(seq), 900))
	}
	h.mustAppend(&Append{Epoch: ep, Items: items})
	// A transaction in pieces that straddle parts.
	seq++
	big := txnEvents(gt(seq), 20000)
	cut := len(gtidEv(gt(seq))) + len(ev(binlog.TableMapEvent, 30))
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), First: true, Events: big[:cut]}}}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), Last: true, Events: big[cut:]}}}})
	// An open transaction whose pieces land in new parts, then dropped by a new epoch.
	open1 := txnEvents(gt(seq+1), 30000)
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq, Items: []Item{{Txn: &Txn{GTID: gt(seq + 1), First: true, Events: open1[:cut]}}}})
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq, Items: []Item{{Txn: &Txn{GTID: gt(seq + 1), Events: open1[cut : len(open1)-len(binlog.NewXID(testServer, 1, true))]}}}})
	partsBefore := len(h.g.m.PartStarts)
	ep = h.claim()
	if len(h.g.m.PartStarts) >= partsBefore {
		t.Fatalf("dropping the open transaction kept its parts (%d, before %d)", len(h.g.m.PartStarts), partsBefore)
	}
	if _, err := os.Stat(h.g.partPath(1, partsBefore)); !os.IsNotExist(err) {
		t.Fatal("a part holding only dropped pieces is still on disk")
	}
	if len(h.g.m.PartStarts) < 3 {
		t.Fatalf("only %d parts after %d bytes with 8 KiB parts", len(h.g.m.PartStarts)+1, h.g.m.SegSize)
	}
	// A replica waiting at the tail while the file gains parts and is then closed.
	tl, _ := h.g.Tail()
	live, err := h.g.NewCursor(Start{File: 1, Served: tl.FileSize, Seg: tl.SegSize})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	liveFrom := seq
	more := []Item{}
	for i := 0; i < 12; i++ {
		seq++
		more = append(more, txn(gt(seq), 1500))
	}
	h.mustAppend(&Append{Epoch: ep, PrevOrdinal: liveFrom, Items: more})
	for f := 2; f <= 4; f++ {
		items := []Item{newFile(fmt.Sprintf("m.%d", f), nil)}
		prev := seq
		for i := 0; i < 12; i++ {
			seq++
			items = append(items, txn(gt(seq), 1500))
		}
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items})
	}
	tl, _ = h.g.Tail()
	for want := liveFrom + 1; want <= liveFrom+12; {
		r, err := live.Next(tl)
		if err != nil {
			t.Fatalf("live cursor, waiting for %d: %v", want, err)
		}
		if r.Type == recTxn {
			if g, _ := TxnGTID(r.Payload); g.Seq != want {
				t.Fatalf("live cursor read %v, want %d", g, want)
			}
			want++
		}
	}
	all := readAll(t, h.g, Start{File: 1, Served: 4}) // log_pos continuity across parts
	if n := countTxns(t, all); n != seq {
		t.Fatalf("read %d transactions, appended %d", n, seq)
	}
	// Lookups land in later parts.
	for _, k := range []uint64{5, 25, 31, seq - 1} {
		s, err := h.g.Locate(binlog.Position{0: gt(k)})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := h.g.NewCursor(s)
		tail, _ := h.g.Tail()
		for {
			r, err := c.Next(tail)
			if err != nil {
				t.Fatalf("after %d: %v", k, err)
			}
			if r.Type == recTxn {
				if g, _ := TxnGTID(r.Payload); g.Seq != k+1 {
					t.Fatalf("after %d comes %v", k, g)
				}
				break
			}
		}
		c.Close()
	}
	// Closed files' parts get compressed after a Sync; reads stay identical.
	if err := h.g.Sync(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, e0 := os.Stat(h.g.partPath(1, 0) + zstSuffix)
		_, e1 := os.Stat(h.g.partPath(1, 2) + zstSuffix)
		if e0 == nil && e1 == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("parts of file 1 were not compressed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	again := readAll(t, h.g, Start{File: 1, Served: 4})
	for i := range all {
		if !bytes.Equal(all[i].Payload, again[i].Payload) {
			t.Fatalf("record %d differs once parts are compressed", i)
		}
	}
	// Snapshot and reopen keep the parts.
	dst := snapshotInto(t, h, newHarnessSized(t, t.TempDir(), 8<<10))
	defer dst.close()
	if got := readAll(t, dst.g, Start{File: 1, Served: 4}); len(got) != len(all) || !bytes.Equal(got[len(got)-1].Payload, all[len(all)-1].Payload) {
		t.Fatal("snapshot of a multi-part group differs")
	}
	h.close()
	h2 := newHarnessSized(t, dir, 8<<10)
	defer h2.close()
	if got := readAll(t, h2.g, Start{File: 1, Served: 4}); len(got) != len(all) {
		t.Fatal("reopen lost records")
	}
	if r := h2.apply(EncodePurge(3)); r.Value != ResultOK {
		t.Fatalf("purge: %s", r.Data)
	}
	left, _ := filepath.Glob(filepath.Join(h2.g.dir, "000001.*"))
	left2, _ := filepath.Glob(filepath.Join(h2.g.dir, "000002.*"))
	if len(left)+len(left2) != 0 {
		t.Fatalf("purge left parts of purged files: %v %v", left, left2)
	}
}

// snapshotInto saves a snapshot of src and recovers it into dst, as a joining replica.
func snapshotInto(t *testing.T, src, dst *harness) *harness {
	t.Helper()
	ctx, err := src.g.PrepareSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := src.g.SaveSnapshot(ctx, &buf, nil); err != nil {
		t.Fatal(err)
	}
	if err := dst.g.RecoverFromSnapshot(&buf, nil); err != nil {
		t.Fatal(err)
	}
	return dst
}

// A closed segment whose data does not compress (random bytes here; compressed or
// encrypted row images in life), or not in its bulk, is left plain, costing no compression CPU and no
// decompression for its readers; one that compresses is swapped for its .zst.
func TestIncompressibleSegmentStaysPlain(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	dir := t.TempDir()
	random := make([]byte, 2<<20)
	if _, err := crand.Read(random); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	for _, c := range []struct {
		name  string
		data  []byte
		plain bool
	}{
		{"random", random, true},
		{"rows", bytes.Repeat([]byte("INSERT INTO t VALUES (1, 'abc');"), 64<<10), false},
		// Rows first, then a bulk that does not compress: judged by its bulk.
		{"rows then random", append(bytes.Repeat([]byte("INSERT INTO t VALUES (1, 'abc');"), 4<<10), random...), true},
	} {
		path := filepath.Join(dir, c.name)
		if err := os.WriteFile(path, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := (&compressor{s: h.store}).compressSegment(path, &mu, func(int64, int64) {})
		_, plainErr := os.Stat(path)
		_, zstErr := os.Stat(path + zstSuffix)
		_, markErr := os.Stat(path + plainSuffix)
		if c.plain && (!errors.Is(err, errIncompressible) || plainErr != nil || zstErr == nil || markErr != nil) {
			t.Fatalf("%s: err %v, plain file %v, compressed file %v, marker %v: want it left plain and marked so", c.name, err, plainErr, zstErr, markErr)
		}
		if !c.plain && (err != nil || plainErr == nil || zstErr != nil) {
			t.Fatalf("%s: err %v, plain file %v, compressed file %v: want it compressed", c.name, err, plainErr, zstErr)
		}
	}
}

// TestCompressorReusesItsEncoder: one compressor compresses segment after segment
// with the one encoder. A new encoder per segment allocated its tables and history
// (tens of MB) afresh each time, which a node touches anew.
func TestCompressorReusesItsEncoder(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	dir := t.TempDir()
	c := &compressor{s: h.store}
	defer c.release()
	var mu sync.Mutex
	rows := bytes.Repeat([]byte("INSERT INTO t VALUES (1, 'abc');"), 16<<10) // 512 KiB
	compress := func(name string) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, rows, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.compressSegment(path, &mu, func(int64, int64) {}); err != nil {
			t.Fatal(err)
		}
	}
	compress("first") // makes the encoder
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range 4 {
		compress(fmt.Sprint("next", i))
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
		t.Fatalf("compressing 4 segments of 512 KiB allocated %d MiB: the encoder is not reused", n>>20)
	}
}
