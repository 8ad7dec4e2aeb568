package mysqlfront

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"
)

// The dump's buffered framing round-trips events of every size through a real
// packet reader: small ones, one whose packet is exactly the 16 MiB maximum (it must
// be followed by an empty packet) and one that needs continuation packets, with
// sequence ids continuing across them.
func TestEventWriterFramesAnySize(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	ss := newTestSession()
	ss.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	ss.c = &conn{Conn: packet.NewConn(server), client: server}
	w := &eventWriter{ss: ss, out: bufio.NewWriterSize(server, 64<<10), reg: &replicaInfo{}, sent: func(int) {}}
	sizes := []int{19, 1000, mysql.MaxPayloadLen - 1, mysql.MaxPayloadLen + 5, 40 << 20}
	events := make([][]byte, len(sizes))
	for i, n := range sizes {
		events[i] = bytes.Repeat([]byte{byte('a' + i)}, n)
	}
	errc := make(chan error, 1)
	go func() {
		for _, ev := range events {
			if err := w.Event(ev); err != nil {
				errc <- err
				return
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
