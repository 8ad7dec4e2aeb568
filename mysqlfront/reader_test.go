package mysqlfront

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
)

// readAll reads packets until an error, returning them and the error.
func readAll(p *packetReader) ([][]byte, error) {
	var out [][]byte
	var seq uint8
	for {
		b, err := p.readPacket(&seq)
		if err != nil {
			return out, err
		}
		out = append(out, append([]byte(nil), b...))
	}
}

// TestPacketReaderRefusesBeforeTheBody: a header announcing more than the limit
// (alone, or summed over continuation packets) is refused as soon as it is read,
// with the offending sequence id and size kept for the client's error.
func TestPacketReaderRefusesBeforeTheBody(t *testing.T) {
	for _, step := range []int{1, 3, 7, 4096} {
		small := rawPacket(0, 100)
		big := []byte{0x00, 0x00, 0x20, 1} // 2 MiB announced, no body follows
		p := &packetReader{r: &trickleConn{r: bytes.NewReader(append(small, big...)), step: step}, max: 1 << 20}
		got, err := readAll(p)
		if !errors.Is(err, errPacketTooLarge) {
			t.Fatalf("step %d: err = %v, want errPacketTooLarge", step, err)
		}
		if len(got) != 1 || !bytes.Equal(got[0], small[4:]) {
			t.Fatalf("step %d: read %d packets, want the first one whole", step, len(got))
		}
		if p.overSeq != 1 || p.overBody != 2<<20 {
			t.Fatalf("step %d: offending packet seq %d size %d, want 1 and 2 MiB", step, p.overSeq, p.overBody)
		}
		if _, err := p.readPacket(new(uint8)); !errors.Is(err, errPacketTooLarge) {
			t.Fatalf("step %d: a reader over its limit must stay over it, got %v", step, err)
		}
	}
	// Continuations count together: 0xffffff + 0xffffff > 16 MiB + 1.
	r := io.MultiReader(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0}), bytes.NewReader(make([]byte, 0xffffff)), bytes.NewReader([]byte{0xff, 0xff, 0xff, 1}))
	if _, err := readAll(&packetReader{r: r, max: 16<<20 + 1}); !errors.Is(err, errPacketTooLarge) {
		t.Fatalf("continuations: err = %v, want errPacketTooLarge", err)
	}
	// A continued packet within the limit arrives whole.
	body := bytes.Repeat([]byte{7}, 0xffffff+10)
	stream := append([]byte{0xff, 0xff, 0xff, 0}, body[:0xffffff]...)
	stream = append(stream, 10, 0, 0, 1)
	stream = append(stream, body[0xffffff:]...)
	got, err := readAll(&packetReader{r: bytes.NewReader(stream), max: 32 << 20})
	if !errors.Is(err, io.EOF) || len(got) != 1 || !bytes.Equal(got[0], body) {
		t.Fatalf("continued packet: %d packets, err %v", len(got), err)
	}
}

// TestPacketReaderOutOfOrder: a packet with the wrong sequence id is an error.
func TestPacketReaderOutOfOrder(t *testing.T) {
	_, err := readAll(&packetReader{r: bytes.NewReader(rawPacket(5, 3)), max: 100})
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("err = %v, want an out-of-order error", err)
	}
}

// TestPacketReaderMemoryFollowsTheBytes: a client announcing a large packet and
// sending a few bytes of it costs a few KiB, not the announced size (go-mysql's
// reader allocated it whole from the header).
func TestPacketReaderMemoryFollowsTheBytes(t *testing.T) {
	stream := append([]byte{0xf0, 0xff, 0xff, 0}, bytes.Repeat([]byte{'x'}, 100)...) // ~16 MiB announced, 100 bytes sent
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		p := &packetReader{r: bytes.NewReader(stream), max: 64 << 20}
		if _, err := p.readPacket(new(uint8)); err == nil {
			t.Fatal("a truncated packet must be an error")
		}
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 10*(readChunk+16<<10) {
		t.Fatalf("10 reads of a 16 MiB announcement with 100 bytes sent allocated %d bytes", got)
	}
}

// FuzzPacketReader: any client byte stream and limit never panic the reader, never
// yield more bytes than were sent or a packet over the limit, and a reader over its
// limit stays over it.
func FuzzPacketReader(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 'x', 0xff, 0xff, 0xff, 1}, uint8(3), uint16(100))
	f.Add([]byte{0, 0, 0x20, 0}, uint8(1), uint16(1000))
	f.Add(append(rawPacket(0, 3), rawPacket(1, 5)...), uint8(2), uint16(4))
	f.Fuzz(func(t *testing.T, stream []byte, step uint8, max uint16) {
		p := &packetReader{r: &trickleConn{r: bytes.NewReader(stream), step: int(step%32) + 1}, max: int64(max)}
		got, err := readAll(p)
		total := 0
		for _, b := range got {
			if int64(len(b)) > p.max {
				t.Fatalf("a %d-byte packet passed a %d-byte limit", len(b), p.max)
			}
			total += len(b)
		}
		if total > len(stream) {
			t.Fatalf("read %d bytes of a %d-byte stream", total, len(stream))
		}
		if errors.Is(err, errPacketTooLarge) {
			if _, err := p.readPacket(new(uint8)); !errors.Is(err, errPacketTooLarge) {
				t.Fatal("a reader over the limit must stay over it")
			}
		}
	})
}
