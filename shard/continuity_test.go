package shard

import (
	"slices"
	"testing"
)

// TestClassify: what a new master has and the group lacks is errant when the master
// had it before it caught up with the group (a transaction the group holds follows
// it) or did not write it itself; only its own writes after the group's last
// transaction are its writes since its promotion.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		txns   []seenTxn
		errant []string
		own    int
	}{
		{"caught up, then promoted", []seenTxn{{gtid: "1", held: true}, {gtid: "2", held: true}, {gtid: "3", own: true}, {gtid: "4", own: true}}, nil, 2},
		{"direct write before promotion", []seenTxn{{gtid: "1", held: true}, {gtid: "x", own: true}, {gtid: "2", held: true}, {gtid: "3", own: true}}, []string{"x"}, 1},
		{"another master's transaction at the end", []seenTxn{{gtid: "1", held: true}, {gtid: "y"}, {gtid: "3", own: true}}, []string{"y"}, 1},
		{"nothing held", []seenTxn{{gtid: "a", own: true}}, nil, 1},
		{"empty", nil, nil, 0},
	} {
		errant, own := classify(tc.txns)
		if !slices.Equal(errant, tc.errant) || own != tc.own {
			t.Errorf("%s: errant %v own %d, want %v %d", tc.name, errant, own, tc.errant, tc.own)
		}
	}
}
