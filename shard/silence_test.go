package shard

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// TestFlavorMissing: a silent stream misses exactly the GTIDs the master reports
// that the group does not hold, in each flavor's own form.
func TestFlavorMissing(t *testing.T) {
	pos, err := binlog.ParsePosition("0-1-10,1-2-5")
	if err != nil {
		t.Fatal(err)
	}
	maria := &mariadbFlavor{state: pos}
	set, err := binlog.ParseMySQLSet(testUUID + ":1-10")
	if err != nil {
		t.Fatal(err)
	}
	my := &mysqlFlavor{executed: set}
	for _, tc := range []struct {
		fl       upstreamFlavor
		executed string
		want     string
	}{
		{maria, "0-1-10,1-2-5", ""},
		{maria, "0-1-9", ""},
		{maria, "", ""},
		{maria, "0-1-11", "0-1-11"},
		{maria, "0-1-10,2-1-1", "2-1-1"}, // a domain the group has not seen
		{my, testUUID + ":1-10", ""},
		{my, testUUID + ":3-7", ""},
		{my, testUUID + ":1-12", testUUID + ":11-12"},
		{my, testUUID + ":1-10,\n3e11fa47-71ca-11e1-9e33-c80aa9429562:1", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1"}, // as gtid_executed prints two sources
		{my, "", ""},
	} {
		got, err := tc.fl.missing(tc.executed)
		if err != nil || got != tc.want {
			t.Errorf("%T missing(%q) = %q, %v; want %q", tc.fl, tc.executed, got, err, tc.want)
		}
	}
	if _, err := maria.missing("garbage"); err == nil {
		t.Error("a malformed position must be an error, not a verdict")
	}
}

const testUUID = "d725c94e-606e-45cc-ade2-29bf1b217ca1"

// TestCheckSilence walks the probes' verdicts: a silent stream is kept while the
// group holds all the master wrote, ended once the master is ahead at two probes
// with nothing received between, kept when bytes arrived between, ended when the
// master is unreachable, kept (for a while) when the probe cannot judge, and GTIDs
// that a fresh connection did not bring either are no longer waited for.
func TestCheckSilence(t *testing.T) {
	ctx := context.Background()
	set, _ := binlog.ParseMySQLSet(testUUID + ":1-10")
	fl := &mysqlFlavor{executed: set}
	s := &Shard{log: slog.New(slog.DiscardHandler)}
	answer := func(v string, err error) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { return v, err }
	}
	silent := func() *linkWatch {
		w := newLinkWatch()
		w.last.Store(w.at(time.Now().Add(-DefaultSilenceProbe - time.Second)))
		return w
	}
	// Not silent long enough: no probe at all.
	if err := s.checkSilence(ctx, &silence{}, newLinkWatch(), fl, answer("", errors.New("must not be asked"))); err != nil {
		t.Fatalf("probed a stream silent for less than DefaultSilenceProbe: %v", err)
	}
	var st silence
	w := silent()
	for i := 0; i < 3; i++ {
		if err := s.checkSilence(ctx, &st, w, fl, answer(testUUID+":1-10", nil)); err != nil {
			t.Fatalf("probe %d: a silent stream missing nothing was ended: %v", i, err)
		}
	}
	ahead := answer(testUUID+":1-12", nil)
	if err := s.checkSilence(ctx, &st, w, fl, ahead); err != nil {
		t.Fatalf("ended at the first probe that found the master ahead (may be in flight): %v", err)
	}
	w.last.Store(w.at(time.Now())) // bytes arrive, then silence again
	w.last.Store(w.at(time.Now().Add(-DefaultSilenceProbe - time.Second + 10*time.Millisecond)))
	st.probeAt = time.Now().Add(-time.Hour)
	if err := s.checkSilence(ctx, &st, w, fl, ahead); err != nil {
		t.Fatalf("ended although bytes came since the last probe: %v", err)
	}
	err := s.checkSilence(ctx, &st, w, fl, ahead)
	if err == nil || !strings.Contains(err.Error(), testUUID+":11-12") {
		t.Fatalf("the master ahead at two probes with nothing between must end the stream naming the missing GTIDs: %v", err)
	}
	// The next connection: the same GTIDs missing again, nothing brought them.
	var st2 silence
	for i := 0; i < 3; i++ {
		if err := s.checkSilence(ctx, &st2, silent(), fl, ahead); err != nil {
			t.Fatalf("GTIDs a fresh dump did not bring either are waited for again: %v", err)
		}
	}
	if s.unserved != testUUID+":11-12" {
		t.Fatalf("unserved %q", s.unserved)
	}
	long := newLinkWatch()
	long.last.Store(long.at(time.Now().Add(-silenceGiveUp)))
	if err := s.checkSilence(ctx, &silence{}, long, fl, ahead); err == nil {
		t.Fatal("GTIDs judged not in the binlog must still earn a fresh connection after silenceGiveUp")
	}
	if err := s.checkSilence(ctx, &silence{}, silent(), fl, answer("", errSourceDown)); !errors.Is(err, errSourceDown) {
		t.Fatalf("an unreachable master must end the stream as down: %v", err)
	}
	if err := s.checkSilence(ctx, &silence{}, silent(), fl, answer("", errCannotJudge)); err != nil {
		t.Fatalf("a probe that cannot judge must not end the stream at once: %v", err)
	}
	w = newLinkWatch()
	w.last.Store(w.at(time.Now().Add(-silenceGiveUp)))
	if err := s.checkSilence(ctx, &silence{}, w, fl, answer("", errCannotJudge)); err == nil || errors.Is(err, errSourceDown) {
		t.Fatalf("a stream silent for silenceGiveUp that no probe can judge must end (not as down): %v", err)
	}
}

// TestLinkWatch: reads are bounded while connecting and unbounded once streaming, also
// for a read already waiting; every byte read counts as activity.
func TestLinkWatch(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := newLinkWatch()
	w.bound = 50 * time.Millisecond
	entered := make(chan struct{}, 4)
	c := w.wrap(&enteringConn{Conn: a, entered: entered})
	buf := make([]byte, 8)
	if _, err := c.Read(buf); err == nil {
		t.Fatal("a read while connecting must time out")
	}
	<-entered
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(buf)
		done <- err
	}()
	<-entered // the read is under way, with its deadline
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
	// A connection opened after the dump started (go-mysql's KILL connection)
	// is bounded until it too is live.
	x, y := net.Pipe()
	defer x.Close()
	defer y.Close()
	late := w.wrap(x)
	if _, err := late.Read(buf); err == nil {
		t.Fatal("a connection opened after streaming() read without a deadline")
	}
}

// enteringConn says when a Read begins (after watchedConn set its deadline).
type enteringConn struct {
	net.Conn
	entered chan struct{}
}

func (c *enteringConn) Read(p []byte) (int, error) {
	c.entered <- struct{}{}
	return c.Conn.Read(p)
}

// TestMasterHeartbeat: three missed heartbeats never take longer than a probe (for
// probes of 3 s and up), and an idle master is not asked for one a second.
func TestMasterHeartbeat(t *testing.T) {
	for _, c := range []struct{ probe, want time.Duration }{
		{time.Second, time.Second},
		{3 * time.Second, time.Second},
		{9 * time.Second, 3 * time.Second},
		{DefaultSilenceProbe, 5 * time.Second},
		{2 * time.Minute, 5 * time.Second},
	} {
		got := masterHeartbeat(c.probe)
		if got != c.want {
			t.Errorf("masterHeartbeat(%v) = %v, want %v", c.probe, got, c.want)
		}
		if c.probe >= 3*time.Second && 3*got > c.probe {
			t.Errorf("masterHeartbeat(%v) = %v: three missed heartbeats outlast the probe", c.probe, got)
		}
	}
}
