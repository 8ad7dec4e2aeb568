package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// TestSemiStream reads the recorded binlogs from a semi-sync master through the
// syncer's own dump stream: every event arrives (the packet sequence restarts after
// each event that asks for an ACK, 309 times), an ACK reaches the master only when
// sent, and close ends the reader even while it waits to hand an event on.
func TestSemiStream(t *testing.T) {
	m := mysqlmaster.Start(t, "../test/fixtures/mysql-binlog/binlog")
	m.EnableSemiSync()
	empty, _ := mysql.ParseMysqlGTIDSet("")
	st, err := openDumpStream(t.Context(), dumpConfig{addr: m.Addr(), user: m.User, password: m.Password, serverID: 77,
		mysqlFlavor: true, gset: empty, heartbeat: time.Second, semiSync: true, uuid: syncerUUID(placement.Upstream{Name: "up"}, 5)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	// An upstream with semi-sync off stays a plain replica of the same master, and
	// reads its events without the semi-sync header.
	plain, err := openDumpStream(t.Context(), dumpConfig{addr: m.Addr(), user: m.User, password: m.Password, serverID: 78,
		mysqlFlavor: true, gset: empty, heartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.close()
	if plain.semi {
		t.Fatal("semi-sync was not asked for, the stream announced it")
	}
	if ev, err := plain.next(t.Context()); err != nil || len(ev) < 19 || ev[4] != binlog.RotateEvent && ev[4] != binlog.FormatDescription {
		t.Fatalf("the plain stream's first event: %v (%x), want a Rotate or Format_description", err, ev[:min(len(ev), 19)])
	}
	if !st.semi {
		t.Fatal("the master has semi-sync on, the stream did not take it")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	gtids, xids := 0, 0
	for gtids < 309 || xids < 294 {
		ev, err := st.next(ctx)
		if err != nil {
			t.Fatalf("after %d GTIDs: %v", gtids, err)
		}
		switch ev[4] {
		case binlog.MySQLGTIDEvent:
			gtids++
		case binlog.XIDEvent:
			xids++
		}
	}
	if f, p := m.Acked(); f != "" || p != 0 {
		t.Fatalf("the master got an ACK (%s:%d) nobody sent", f, p)
	}
	file, end := m.End()
	if err := st.ack(file, end); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if f, p := m.Acked(); f == file && p == end {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ACK did not reach the master")
		}
	}
	// Heartbeats fill the read-ahead while nobody reads; close must still end the
	// reader, blocked handing on the next one.
	for deadline := time.Now().Add(15 * time.Second); len(st.events) < cap(st.events); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("heartbeats did not fill the read-ahead")
		}
	}
	done := make(chan struct{})
	go func() { st.close(); _, _ = st.next(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not end the stream")
	}
}

// TestStreamReusesReleasedBuffers: the stream reads later events into the buffers of
// events given back, never into one still held: every event of the recorded binlogs
// arrives whole (its checksum holds, and one kept aside is unchanged at the end), and
// most come in a reused buffer.
func TestStreamReusesReleasedBuffers(t *testing.T) {
	m := mysqlmaster.Start(t, "../test/fixtures/mysql-binlog/binlog")
	empty, _ := mysql.ParseMysqlGTIDSet("")
	st, err := openDumpStream(t.Context(), dumpConfig{addr: m.Addr(), user: m.User, password: m.Password, serverID: 79,
		mysqlFlavor: true, gset: empty, heartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	released := map[*byte]bool{}
	var kept, keptCopy []byte
	events, reused := 0, 0
	for gtids := 0; gtids < 309; {
		ev, err := st.next(ctx)
		if err != nil {
			t.Fatalf("after %d GTIDs: %v", gtids, err)
		}
		events++
		end := &ev[:cap(ev)][cap(ev)-1] // the buffer's last byte: a reuse starts further in
		if released[end] {
			reused++
		}
		if ev[4] == binlog.HeartbeatEvent || ev[4] == binlog.RotateEvent && binary.LittleEndian.Uint32(ev[13:]) == 0 {
			continue // fake events (no checksum); a heartbeat also empties the free list
		}
		if err := binlog.VerifyChecksum(ev); err != nil {
			t.Fatalf("event %d (type %d, %d bytes) arrived damaged: %v", events, ev[4], len(ev), err)
		}
		switch {
		case ev[4] == binlog.MySQLGTIDEvent:
			gtids++
			if kept == nil && gtids == 100 {
				kept, keptCopy = ev, bytes.Clone(ev) // held, never released
				continue
			}
		}
		released[end] = true
		st.release(ev)
	}
	if !bytes.Equal(kept, keptCopy) {
		t.Fatal("an event still held was overwritten by a later one")
	}
	if reused < events/2 {
		t.Fatalf("%d of %d events came in a reused buffer, want most", reused, events)
	}
}

// TestStreamMalformedErrorPacket: an error packet too short for its code and SQL
// state ends the stream with an error that says so, where go-mysql's parser would
// panic the reader (and the node); a well-formed one arrives as the master's error.
func TestStreamMalformedErrorPacket(t *testing.T) {
	for _, tc := range []struct {
		body []byte
		want string
	}{
		{[]byte{0xff, 0x01}, "malformed error packet of 2 bytes"},
		{append([]byte{0xff, 0x29, 0x04, '#', 'H', 'Y', '0', '0', '0'}, "Out of memory"...), "Out of memory"},
	} {
		master, replica := net.Pipe()
		st := &dumpStream{c: &client.Conn{}, events: make(chan []byte, eventReadAhead), errc: make(chan error, 1), done: make(chan struct{}),
			free: make(chan []byte, eventReadAhead+2), conn: replica, seq: 1, readers: &sync.Pool{}}
		go st.read()
		go func() {
			_, _ = master.Write(append([]byte{byte(len(tc.body)), 0, 0, 1}, tc.body...))
		}()
		_, err := st.next(t.Context())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("error packet %x: got %v, want an error containing %q", tc.body, err, tc.want)
		}
		st.close()
		master.Close()
	}
}

// TestSyncerUUID: a group's syncer UUID is a well-formed name-based UUID, the same for
// every leader of the group, and another group's differs.
func TestSyncerUUID(t *testing.T) {
	u := placement.Upstream{Name: "up"}
	a, b := syncerUUID(u, 5), syncerUUID(u, 6)
	if a != syncerUUID(u, 5) || a == b {
		t.Fatalf("uuids %s, %s, %s: want one per group, stable", a, syncerUUID(u, 5), b)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(a) {
		t.Fatalf("%s is not a version-5-shaped UUID", a)
	}
}

// TestBufferedFillsWithoutGrowing: buffered takes the events already read, in order,
// at most as many as dst holds (a syncer reuses dst), and leaves the stream's error
// for next once the reader has ended.
func TestBufferedFillsWithoutGrowing(t *testing.T) {
	st := &dumpStream{events: make(chan []byte, 5), errc: make(chan error, 1), done: make(chan struct{})}
	for i := range 5 {
		st.events <- []byte{byte(i)}
	}
	st.errc <- io.ErrUnexpectedEOF
	close(st.events)
	dst := make([][]byte, 0, 3)
	got := st.buffered(dst)
	if len(got) != 3 || cap(got) != 3 || &got[:1][0] != &dst[:1][0] {
		t.Fatalf("buffered took %d events into a slice of cap %d, want 3 into dst itself", len(got), cap(got))
	}
	got = st.buffered(got[:0])
	if len(got) != 2 || got[0][0] != 3 || got[1][0] != 4 {
		t.Fatalf("second call took %v, want events 3 and 4", got)
	}
	if got = st.buffered(got[:0]); len(got) != 0 {
		t.Fatalf("after the stream ended, buffered took %v, want nothing", got)
	}
	if _, err := st.next(context.Background()); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("next after the reader ended: %v, want its error", err)
	}
}
