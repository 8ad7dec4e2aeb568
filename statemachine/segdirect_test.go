package statemachine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/internal/directio"
)

// newDirectHarness opens a store on the operating system's filesystem with direct
// I/O for segments as asked, its parts rolling at size bytes.
func newDirectHarness(t *testing.T, dir string, direct bool, size uint64) *harness {
	t.Helper()
	return newHarnessOn(t, vfs.Default, dir, size, func(st *Store) {
		// Both stores date closed files alike, or their redo records would differ
		// whenever the two applied a rotation in different seconds.
		st.now = func() time.Time { return time.Unix(1700000000, 0) }
		if on := st.SetDirectIO(direct); on != (direct && directio.Available()) {
			t.Fatalf("SetDirectIO(%v) on the operating system's filesystem = %v", direct, on)
		}
	})
}

// requireDirectIO skips (outside CI) where dir's filesystem refuses direct writes.
func requireDirectIO(t *testing.T, dir string) {
	t.Helper()
	if !directio.Available() {
		t.Skip("no direct I/O on this platform")
	}
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_CREATE|os.O_WRONLY|directio.Flag, 0o600)
	if err == nil {
		_, err = f.WriteAt(directio.Aligned(directio.Block), 0)
		f.Close()
		os.Remove(filepath.Join(dir, "probe"))
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s refused direct I/O (%v): CI must run this test where it is allowed", dir, err)
		}
		t.Skipf("%s refused direct I/O (O_DIRECT): nothing to test here (%v)", dir, err)
	}
}

// TestSegmentDirectIO applies the same commands to a store that writes segments with
// direct I/O and to one that writes them through the page cache: transactions of
// every size (none a multiple of a block), several to an Update, one split over
// proposals, open pieces dropped by a new epoch (a write over the cut and a
// truncation), parts rolling and files rotating. After every Update a reader must
// find each published record in the files, and both stores' segments must be the same
// bytes, also after a reopen; direct I/O must still be on at the end (a misaligned
// write would have turned it off).
func TestSegmentDirectIO(t *testing.T) {
	root := t.TempDir()
	requireDirectIO(t, root)
	const partSize = 1 << 20
	direct := newDirectHarness(t, filepath.Join(root, "direct"), true, partSize)
	plain := newDirectHarness(t, filepath.Join(root, "plain"), false, partSize)
	hs := []*harness{direct, plain}
	defer func() {
		for _, h := range hs {
			h.close()
		}
	}()

	same := func(step string) {
		t.Helper()
		want := readAll(t, plain.g, Start{File: 1, Served: 4})
		got := readAll(t, direct.g, Start{File: 1, Served: 4})
		if len(got) != len(want) {
			t.Fatalf("%s: %d records read with direct I/O, %d without", step, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i].Payload, want[i].Payload) || got[i].Pos != want[i].Pos || got[i].File != want[i].File {
				t.Fatalf("%s: record %d differs (file %d at %d, %d bytes; want file %d at %d, %d bytes)", step, i,
					got[i].File, got[i].Pos, len(got[i].Payload), want[i].File, want[i].Pos, len(want[i].Payload))
			}
		}
		// The open file's parts, byte for byte (closed files may be compressed in
		// the background meanwhile: the readers above cover them).
		cur := fmt.Sprintf("%06d.", plain.g.m.File)
		names, err := os.ReadDir(plain.g.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range names {
			if !strings.HasPrefix(e.Name(), cur) || !strings.HasSuffix(e.Name(), ".seg") {
				continue
			}
			a, err1 := os.ReadFile(filepath.Join(direct.g.dir, e.Name()))
			b, err2 := os.ReadFile(filepath.Join(plain.g.dir, e.Name()))
			if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
				t.Fatalf("%s: segment %s differs with direct I/O (%d bytes, %v; without %d bytes, %v): %s", step, e.Name(), len(a), err1, len(b), err2, byteDiff(a, b))
			}
		}
	}
	each := func(f func(h *harness)) {
		for _, h := range hs {
			f(h)
		}
	}

	rnd := rand.New(rand.NewPCG(46, 1))
	var ep uint64
	each(func(h *harness) { ep = h.claim() })
	each(func(h *harness) {
		h.mustAppend(&Append{Epoch: ep, Items: []Item{newFile("m.000001", binlog.Position{0: gt(0)})}})
	})
	seq := uint64(0)
	// Updates under a stage's size go through the page cache, not directly.
	for i := 0; i < 3; i++ {
		seq++
		it := txn(gt(seq), 200000+rnd.IntN(99999))
		each(func(h *harness) { h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{it}}) })
	}
	same("Updates under a stage's size")
	if n := direct.store.directWrites.Load(); n != 0 {
		t.Fatalf("%d direct writes for Updates under a stage's size, want none", n)
	}
	for round := 0; round < 14; round++ {
		items := []Item{}
		for n := 1 + rnd.IntN(4); n > 0; n-- {
			seq++
			size := 1 + rnd.IntN(5000)
			if rnd.IntN(3) == 0 {
				size = 100000 + rnd.IntN(600000)
			}
			items = append(items, txn(gt(seq), size))
		}
		if round%6 == 5 {
			items = append([]Item{newFile(fmt.Sprintf("m.%06d", 2+round/6), nil)}, items...)
		}
		prev := seq - uint64(len(items))
		if items[0].NewFile != nil {
			prev++
		}
		each(func(h *harness) { h.mustAppend(&Append{Epoch: ep, PrevOrdinal: prev, Items: items}) })
		same(fmt.Sprintf("round %d", round))

		if round%5 == 3 {
			// A transaction in two proposals, then one whose first piece a new
			// epoch drops.
			seq++
			big := txnEvents(gt(seq), 700000+rnd.IntN(9999))
			half := len(gtidEv(gt(seq))) + len(ev(binlog.TableMapEvent, 30)) + 333333
			each(func(h *harness) {
				h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), First: true, Events: big[:half]}}}})
			})
			each(func(h *harness) {
				h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{{Txn: &Txn{GTID: gt(seq), Last: true, Events: big[half:]}}}})
			})
			same("split transaction")
			drop := txnEvents(gt(seq+1), 400000)
			each(func(h *harness) {
				h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq, Items: []Item{{Txn: &Txn{GTID: gt(seq + 1), First: true, Events: drop[:200001]}}}})
			})
			each(func(h *harness) { ep = h.claim() })
			same("pieces dropped by a new epoch")

			// One Update of several entries: a large transaction, a first piece
			// staged in the same Update as the ClaimEpoch that drops it (the drop
			// flushes the stage, writes its record over the cut and truncates), and
			// one more after it.
			seq++
			one, piece, after := txn(gt(seq), 1300000+rnd.IntN(999)), txnEvents(gt(seq+1), 500000), txn(gt(seq+1), 200000)
			each(func(h *harness) {
				cmds := [][]byte{
					(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{one}}).Encode(),
					(&Append{Epoch: ep, PrevOrdinal: seq, Items: []Item{{Txn: &Txn{GTID: gt(seq + 1), First: true, Events: piece[:300007]}}}}).Encode(),
					EncodeClaimEpoch(),
					(&Append{Epoch: ep + 1, PrevOrdinal: seq, Items: []Item{after}}).Encode(),
				}
				entries := make([]sm.Entry, len(cmds))
				for i, c := range cmds {
					h.index++
					entries[i] = sm.Entry{Index: h.index, Cmd: c}
				}
				out, err := h.g.Update(entries)
				if err != nil {
					t.Fatal(err)
				}
				for i, e := range out {
					if e.Result.Value != ResultOK {
						t.Fatalf("entry %d of the Update rejected: %s", i, e.Result.Data)
					}
				}
			})
			ep++
			seq++
			same("one Update with a drop inside")
		}
	}
	if !direct.store.DirectIO() {
		t.Fatal("direct I/O was turned off: a direct write was refused (misaligned?)")
	}
	if direct.store.directWrites.Load() == 0 || plain.store.directWrites.Load() != 0 {
		t.Fatalf("direct writes: %d with direct I/O (want some), %d without (want none)", direct.store.directWrites.Load(), plain.store.directWrites.Load())
	}
	for i, h := range hs {
		h.close()
		hs[i] = newDirectHarness(t, h.dir, h == direct, partSize)
	}
	direct, plain = hs[0], hs[1]
	same("after reopening")
	// A large Update at the reopened part's unaligned end.
	seq++
	last := txn(gt(seq), 2500000)
	each(func(h *harness) { h.mustAppend(&Append{Epoch: ep, PrevOrdinal: seq - 1, Items: []Item{last}}) })
	same("a large Update after reopening")
	if direct.store.directWrites.Load() == 0 {
		t.Fatal("no direct write after reopening")
	}
	if n := countTxns(t, readAll(t, direct.g, Start{File: 1, Served: 4})); n != seq {
		t.Fatalf("%d transactions after reopening, want %d", n, seq)
	}
}

// byteDiff describes where a and b differ: the first and last differing offsets, how
// many bytes differ, and a few bytes of each from the first difference.
func byteDiff(a, b []byte) string {
	first, last, n := -1, -1, 0
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			if first < 0 {
				first = i
			}
			last = i
			n++
		}
	}
	if first < 0 {
		return fmt.Sprintf("equal over the first %d bytes", min(len(a), len(b)))
	}
	end := min(first+16, len(a), len(b))
	return fmt.Sprintf("%d bytes differ from offset %d to %d; at %d: %x against %x", n, first, last, first, a[first:end], b[first:end])
}
