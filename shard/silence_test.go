package shard

import (
	"net"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestFlavorCovers: a silent stream misses nothing exactly when the group holds every
// GTID the master reports, in each flavor's own form.
func TestFlavorCovers(t *testing.T) {
	pos, err := binlog.ParsePosition("0-1-10,1-2-5")
	if err != nil {
		t.Fatal(err)
	}
	maria := &mariadbFlavor{state: pos}
	const uuid = "d725c94e-606e-45cc-ade2-29bf1b217ca1"
	set, err := binlog.ParseMySQLSet(uuid + ":1-10")
	if err != nil {
		t.Fatal(err)
	}
	my := &mysqlFlavor{executed: set}
	for _, tc := range []struct {
		fl       upstreamFlavor
		executed string
		want     bool
	}{
		{maria, "0-1-10,1-2-5", true},
		{maria, "0-1-9", true},
		{maria, "", true},
		{maria, "0-1-11", false},
		{maria, "0-1-10,2-1-1", false}, // a domain the group has not seen
		{my, uuid + ":1-10", true},
		{my, uuid + ":3-7", true},
		{my, uuid + ":1-11", false},
		{my, uuid + ":1-10,\n3e11fa47-71ca-11e1-9e33-c80aa9429562:1", false}, // as gtid_executed prints two sources
		{my, "", true},
	} {
		got, err := tc.fl.covers(tc.executed)
		if err != nil || got != tc.want {
			t.Errorf("%T covers(%q) = %v, %v; want %v", tc.fl, tc.executed, got, err, tc.want)
		}
	}
	if _, err := maria.covers("garbage"); err == nil {
		t.Error("a malformed position must be an error, not a verdict")
	}
}

// TestLinkWatch: reads are bounded while connecting and unbounded once streaming, also
// for a read already waiting; every byte read counts as activity.
func TestLinkWatch(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := newLinkWatch()
	w.stall.Store(int64(50 * time.Millisecond))
	c := w.wrap(a)
	buf := make([]byte, 8)
	if _, err := c.Read(buf); err == nil {
		t.Fatal("a read while connecting must time out")
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the read start with its deadline
	w.streaming()
	before := w.idle()
	select {
	case err := <-done:
		t.Fatalf("a read under way ended (%v) although streaming lifts its deadline", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := b.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w.idle() >= before {
		t.Fatalf("a byte read did not count as activity: idle %v, before %v", w.idle(), before)
	}
}
