package mysqlfront

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// newPipeWriter returns a dump's event writer on one end of a pipe and the other end,
// where a replica reads.
func newPipeWriter(t *testing.T) (*eventWriter, net.Conn) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	ss := newTestSession()
	ss.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	ss.c = &conn{Conn: packet.NewConn(server), client: server}
	return newEventWriter(ss, &replicaInfo{}, func(int) {}), client
}

// A write the buffer makes on its own (it filled) has its own deadline: a replica
// that asked for no heartbeats and was idle longer than the write timeout still gets
// the large transaction that follows (it used to fail at once on the deadline left
// by the last flush).
func TestEventWriterDeadlinePerWrite(t *testing.T) {
	server, client := net.Pipe()
	t.Cleanup(func() { server.Close(); client.Close() })
	ss := newTestSession()
	ss.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	// A second: under the race detector on a loaded machine, a 1 MiB write through
	// the pipe once took longer than the 200 ms this test used.
	ss.s.Limits.WriteTimeout = time.Second
	ss.c = &conn{Conn: packet.NewConn(server), client: server}
	w := newEventWriter(ss, &replicaInfo{}, func(int) {})
	small := make([]byte, 100)
	binary.LittleEndian.PutUint32(small[9:], uint32(len(small)))
	big := make([]byte, 1<<20)
	binary.LittleEndian.PutUint32(big[9:], uint32(len(big)))
	r := packet.NewConn(client)
	read := make(chan error, 2)
	go func() {
		for range 2 {
			_, err := r.ReadPacket()
			read <- err
		}
	}()
	if err := w.Event(small); err != nil {
		t.Fatal(err)
	}
	w.Position(1, 104)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond) // idle past the write timeout: the scenario, not a wait
	if err := w.Event(big); err != nil {
		t.Fatalf("an event written after an idle spell longer than the write timeout: %v", err)
	}
	w.Position(1, 104+1<<20)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
}

// The dump's buffered framing round-trips events of every size through a real
// packet reader: small ones, one whose packet is exactly the 16 MiB maximum (it must
// be followed by an empty packet) and one that needs continuation packets, with
// sequence ids continuing across them; each sent whole and in parts (an event cut
// across stored pieces), cut anywhere past its header.
func TestEventWriterFramesAnySize(t *testing.T) {
	w, client := newPipeWriter(t)
	ss := w.ss
	sizes := []int{19, 1000, mysql.MaxPayloadLen - 1, mysql.MaxPayloadLen + 5, 40 << 20}
	events := make([][]byte, len(sizes))
	for i, n := range sizes {
		events[i] = bytes.Repeat([]byte{byte('a' + i)}, n)
		binary.LittleEndian.PutUint32(events[i][9:], uint32(n))
	}
	events = append(events, events...) // the second time in parts
	rnd := rand.New(rand.NewPCG(7, 7))
	errc := make(chan error, 1)
	go func() {
		for i, ev := range events {
			if i < len(sizes) {
				if err := w.Event(ev); err != nil {
					errc <- err
					return
				}
				continue
			}
			for len(ev) > 0 {
				n := min(len(ev), binlog.HeaderLen+rnd.IntN(5<<20))
				if err := w.EventPart(ev[:n]); err != nil {
					errc <- err
					return
				}
				ev = ev[n:]
			}
		}
		w.Position(1, 4)
		errc <- nil
	}()
	r := packet.NewConn(client)
	for i, want := range events {
		got, err := r.ReadPacket()
		if err != nil {
			t.Fatalf("event %d (%d bytes): %v", i, len(want), err)
		}
		if len(got) != len(want)+1 || got[0] != 0x00 || !bytes.Equal(got[1:], want) {
			t.Fatalf("event %d (%d bytes) came back as %d bytes", i, len(want), len(got))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if ss.c.Sequence != r.Sequence {
		t.Fatalf("sequence ids diverged: writer %d, reader %d", ss.c.Sequence, r.Sequence)
	}
}
