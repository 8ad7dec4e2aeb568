package statemachine

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// bigTxn is a transaction whose row event (rowBytes of body) is cut at cuts (offsets
// into the whole transaction): the pieces a syncer proposes for an event larger than
// a raft entry.
func bigTxn(g binlog.GTID, rowBytes int, cuts func(rowStart, rowSize int) []int) (whole []byte, pieces [][]byte) {
	whole = append(whole, gtidEv(g)...)
	whole = append(whole, ev(binlog.TableMapEvent, 30)...)
	rowStart := len(whole)
	row := ev(23, rowBytes)
	whole = append(whole, row...)
	whole = append(whole, binlog.NewXID(testServer, g.Seq, true)...)
	prev := 0
	for _, c := range cuts(rowStart, len(row)) {
		pieces = append(pieces, whole[prev:c])
		prev = c
	}
	return whole, append(pieces, whole[prev:])
}

func pieceItems(g binlog.GTID, pieces [][]byte) []Item {
	var items []Item
	for i, p := range pieces {
		items = append(items, Item{Txn: &Txn{GTID: g, First: i == 0, Last: i == len(pieces)-1, Events: append([]byte(nil), p...)}})
	}
	return items
}

// TestLargeEventInPieces stores events cut across pieces (one piece per raft entry)
// at every boundary: right after the header, inside the body, just before the
// checksum, many times over. Readers get the transaction in pieces, and joined they
// are byte for byte what the transaction placed whole gives.
func TestLargeEventInPieces(t *testing.T) {
	cases := map[string]func(rowStart, rowSize int) []int{
		"whole":           func(int, int) []int { return nil },
		"after header":    func(s, _ int) []int { return []int{s + binlog.HeaderLen} },
		"before checksum": func(s, n int) []int { return []int{s + n - binlog.ChecksumLen} },
		"first, middle and last": func(s, n int) []int {
			var out []int
			for _, c := range binlog.CutEvent(n, 64<<10) {
				out = append(out, s+c)
			}
			return out
		},
	}
	ref := newHarness(t, t.TempDir())
	defer ref.close()
	ep := ref.claim()
	whole, _ := bigTxn(gt(2), 1<<20, cases["whole"])
	ref.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
	ref.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{{Txn: &Txn{GTID: gt(2), First: true, Last: true, Events: whole}}}})
	want := readAll(t, ref.g, Start{File: 1, Served: 4})

	for name, cuts := range cases {
		h := newHarness(t, t.TempDir())
		ep := h.claim()
		h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
		_, pieces := bigTxn(gt(2), 1<<20, cuts)
		for _, it := range pieceItems(gt(2), pieces) {
			h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{it}}) // pieces complete no transaction until the last
		}
		got := readAll(t, h.g, Start{File: 1, Served: 4})
		if len(got) != len(want) || !bytes.Equal(got[2].Payload, want[2].Payload) {
			t.Fatalf("%s: the transaction read back differs from the one stored whole", name)
		}
		// Read raw, the pieces come one record each, flagged.
		if n := countPieces(t, h.g); n != len(pieces) {
			t.Fatalf("%s: read %d pieces, stored %d", name, n, len(pieces))
		}
		checkLocateAtEveryEvent(t, h.g, got[2])
		h.close()
	}
}

// countPieces reads transaction 2's records and checks their flags.
func countPieces(t *testing.T, g *Group) int {
	t.Helper()
	c, err := g.NewCursor(Start{File: 1, Served: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tail, _ := g.Tail()
	n := 0
	for {
		r, err := c.Next(tail)
		if errors.Is(err, ErrAtTail) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := TxnGTID(r.Payload); (ok && !r.Continued && id == gt(2)) || r.Continued {
			if r.Continued != (n > 0) || r.Continues != (r.Type == recPart) {
				t.Fatalf("piece %d flagged continued=%v continues=%v", n, r.Continued, r.Continues)
			}
			n++
		}
	}
}

// TestLeaderChangeInsideLargeEvent: a new epoch between the parts of a cut event
// drops the parts stored so far; the new syncer's pieces then store the transaction
// once, correctly placed.
func TestLeaderChangeInsideLargeEvent(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10)}})
	_, pieces := bigTxn(gt(2), 1<<20, func(s, n int) []int {
		var out []int
		for _, c := range binlog.CutEvent(n, 100<<10) {
			out = append(out, s+c)
		}
		return out
	})
	items := pieceItems(gt(2), pieces)
	for _, it := range items[:3] {
		h.mustAppend(&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{it}})
	}
	ep2 := h.claim()
	if r := h.apply((&Append{Epoch: ep, PrevOrdinal: 1, Items: []Item{items[3]}}).Encode()); r.Value != ResultRejected {
		t.Fatal("a part from the old epoch was accepted")
	}
	for _, it := range items {
		h.mustAppend(&Append{Epoch: ep2, PrevOrdinal: 1, Items: []Item{it}})
	}
	recs := readAll(t, h.g, Start{File: 1, Served: 4})
	if n := countTxns(t, recs); n != 2 {
		t.Fatalf("%d transactions, want 2", n)
	}
	if tail, _ := h.g.Tail(); tail.Ordinal != 2 {
		t.Fatalf("ordinal %d", tail.Ordinal)
	}
}

// TestBadCutsAreRejected: pieces that cut an event inside its header or checksum, or
// end a transaction inside an event, are rejected without a trace.
func TestBadCutsAreRejected(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{})}})
	before, _ := h.g.Tail()
	for name, cut := range map[string]func(s, n int) []int{
		"inside header":   func(s, _ int) []int { return []int{s + 7} },
		"inside checksum": func(s, n int) []int { return []int{s + n - 2} },
	} {
		_, pieces := bigTxn(gt(1), 1000, cut)
		rejected := false
		for _, it := range pieceItems(gt(1), pieces) {
			if r := h.apply((&Append{Epoch: ep, Items: []Item{it}}).Encode()); r.Value == ResultRejected {
				rejected = true
				break
			}
		}
		if !rejected {
			t.Fatalf("%s: accepted", name)
		}
		ep = h.claim() // drops what was accepted
	}
	_, pieces := bigTxn(gt(1), 1000, func(s, _ int) []int { return []int{s + 100} })
	if r := h.apply((&Append{Epoch: ep, Items: []Item{{Txn: &Txn{GTID: gt(1), First: true, Last: true, Events: pieces[0]}}}}).Encode()); r.Value != ResultRejected {
		t.Fatal("a transaction ending inside an event was accepted")
	}
	if after, _ := h.g.Tail(); after.Ordinal != before.Ordinal || after.FileSize != before.FileSize {
		t.Fatalf("rejections changed the tail: %+v -> %+v", before, after)
	}
}

// checkLocateAtEveryEvent resolves every event boundary of transaction rec as a
// file/position start: the record LocateFile names must begin at an event boundary
// (never a piece beginning inside a cut event), and its Skip must lead, through the
// records after it, exactly to the position.
func checkLocateAtEveryEvent(t *testing.T, g *Group, rec Record) {
	t.Helper()
	tail, _ := g.Tail()
	pos := rec.Pos
	err := binlog.Split(rec.Payload, func(ev []byte) error {
		s, err := g.LocateFile(FileName(rec.File), pos)
		if err != nil {
			return err
		}
		c, err := g.NewCursor(s)
		if err != nil {
			return err
		}
		defer c.Close()
		var cut binlog.Stream
		skip := s.Skip
		for skip > 0 || cut.Left > 0 {
			r, err := c.Next(tail)
			if err != nil {
				return fmt.Errorf("position %d: %w", pos, err)
			}
			err = cut.Feed(r.Payload, func(part []byte, _, last bool) error {
				if skip == 0 {
					return nil
				}
				if n := uint64(len(part)); n > skip || n == skip && !last {
					return fmt.Errorf("position %d: skipping %d bytes from %d lands inside an event", pos, s.Skip, s.Served)
				}
				skip -= uint64(len(part))
				return nil
			})
			if err != nil {
				return err
			}
			if skip == 0 {
				break
			}
		}
		pos += uint64(len(ev))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLocateFileBounds: a position past the end of a closed file is refused, not
// resolved into the next file.
func TestLocateFileBounds(t *testing.T) {
	h := newHarness(t, t.TempDir())
	defer h.close()
	ep := h.claim()
	h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.1", binlog.Position{}), txn(gt(1), 10), newFile("m.2", nil), txn(gt(2), 10)}})
	fi, err := h.store.fileInfo(h.g.id, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.g.LocateFile(FileName(1), fi.Size+19); err == nil {
		t.Fatalf("position %d past the end (%d) of a closed file was accepted", fi.Size+19, fi.Size)
	}
	if _, err := h.g.LocateFile(FileName(1), fi.Size); err != nil {
		t.Fatalf("the end of a closed file: %v", err)
	}
}
