package shard

import (
	"slices"
	"testing"
)

// TestClassify: what a new master has and the group lacks is errant when the master
// had it before it caught up with the group (a transaction the group holds follows
// it) or when neither it nor a server the group relays wrote it; the rest, after the
// group's last transaction, continues the group's history (the master's writes since
// its promotion, the old master's last transactions).
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		txns   []seenTxn
		errant []string
		ahead  int
	}{
		{"caught up, then promoted", []seenTxn{{gtid: "1", held: true}, {gtid: "2", held: true}, {gtid: "3", cont: true}, {gtid: "4", cont: true}}, nil, 2},
		{"direct write before promotion", []seenTxn{{gtid: "1", held: true}, {gtid: "x", cont: true}, {gtid: "2", held: true}, {gtid: "3", cont: true}}, []string{"x"}, 1},
		{"another master's transaction at the end", []seenTxn{{gtid: "1", held: true}, {gtid: "y"}, {gtid: "3", cont: true}}, []string{"y"}, 1},
		{"the old master's last transactions, then the new master's", []seenTxn{{gtid: "1", held: true}, {gtid: "2", cont: true}, {gtid: "3", cont: true}}, nil, 2},
		{"nothing held", []seenTxn{{gtid: "a", cont: true}}, nil, 1},
		{"empty", nil, nil, 0},
	} {
		errant, ahead := classify(tc.txns)
		if !slices.Equal(errant, tc.errant) || ahead != tc.ahead {
			t.Errorf("%s: errant %v ahead %d, want %v %d", tc.name, errant, ahead, tc.errant, tc.ahead)
		}
	}
}
