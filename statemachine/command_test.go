package statemachine

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestAppendPrefix: the prefix followed by the last transaction's events is the
// command AppendEncoded writes, byte for byte (the syncer proposes the two as one
// slice in place of the encoding), and a command of one item stays within
// MaxPrefixLen, also with every number at its largest.
func TestAppendPrefix(t *testing.T) {
	rng := rand.New(rand.NewChaCha8([32]byte{7}))
	nums := []uint64{0, 1, 127, 128, 1 << 32, math.MaxUint64}
	num := func() uint64 { return nums[rng.IntN(len(nums))] }
	for i := range 500 {
		a := &Append{Epoch: num(), PrevOrdinal: num(), Sequenced: rng.IntN(2) == 0, Seq: num()}
		for range rng.IntN(3) {
			if rng.IntN(2) == 0 {
				a.Items = append(a.Items, Item{NewFile: &NewFile{ServerID: 9, UpstreamFile: "m.000002", FDE: []byte("fde")}})
			} else {
				a.Items = append(a.Items, Item{Txn: &Txn{GTID: binlog.GTID{Domain: 1, Seq: num()}, Events: []byte("small events")}})
			}
		}
		events := make([]byte, rng.IntN(1<<16))
		for j := range events {
			events[j] = byte(rng.Uint32())
		}
		last := &Txn{GTID: binlog.GTID{Domain: math.MaxUint32, Server: math.MaxUint32, Seq: num()}, First: rng.IntN(2) == 0, Last: rng.IntN(2) == 0, Events: events}
		a.Items = append(a.Items, Item{Txn: last})
		prefix, err := a.AppendPrefix(nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := a.Encode(); !bytes.Equal(append(prefix, events...), want) {
			t.Fatalf("case %d: prefix and events differ from the encoding (%d+%d bytes against %d)", i, len(prefix), len(events), len(want))
		}
		if len(a.Items) == 1 && len(prefix) > MaxPrefixLen {
			t.Fatalf("case %d: a prefix of %d bytes for one item, MaxPrefixLen is %d", i, len(prefix), MaxPrefixLen)
		}
	}
	big := &Append{Epoch: math.MaxUint64, PrevOrdinal: math.MaxUint64, Sequenced: true, Seq: math.MaxUint64,
		Items: []Item{{Txn: &Txn{GTID: binlog.GTID{Domain: math.MaxUint32, Server: math.MaxUint32, Seq: math.MaxUint64}, First: true, Last: true, Events: make([]byte, 1<<20)}}}}
	prefix, err := big.AppendPrefix(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(prefix) > MaxPrefixLen {
		t.Fatalf("the largest prefix of one item is %d bytes, MaxPrefixLen %d", len(prefix), MaxPrefixLen)
	}
	noTxn := &Append{Items: []Item{{NewFile: &NewFile{UpstreamFile: "m.000001"}}}}
	if _, err := noTxn.AppendPrefix(nil); err == nil {
		t.Fatal("AppendPrefix took a command whose last item is a new file")
	}
}
