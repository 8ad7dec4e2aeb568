package mysqlfront

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// collect is an EventSink that joins what it receives.
type collect struct {
	whole, parts int
	got          []byte
}

func (c *collect) Event(ev []byte) error    { c.whole++; c.got = append(c.got, ev...); return nil }
func (c *collect) EventPart(p []byte) error { c.parts++; c.got = append(c.got, p...); return nil }
func (c *collect) Position(uint64, uint64)  {}
func (c *collect) EOF() error               { return nil }

// TestRecordEventsAcrossPieces: records cut inside an event are served as parts, a
// start position several records on (past a cut event) skips exactly to it, a
// position inside an event is refused, and Annotate_rows is dropped across parts.
func TestRecordEventsAcrossPieces(t *testing.T) {
	e1 := binlog.NewOpaque(binlog.TableMapEvent, 1, 30, true)
	big := binlog.NewOpaque(23, 1, 5000, true)
	ann := binlog.NewOpaque(binlog.AnnotateRowsEvent, 1, 3000, true)
	e2 := binlog.NewXID(1, 7, true)
	stream := bytes.Join([][]byte{e1, big, ann, e2}, nil)
	// Records: cut inside big (twice) and inside ann.
	c1, c2, c3 := len(e1)+100, len(e1)+4000, len(e1)+len(big)+1000
	records := [][]byte{stream[:c1], stream[c1:c2], stream[c2:c3], stream[c3:]}
	run := func(skip uint64, annotate bool) (*collect, error) {
		e := &recordEvents{skip: skip, annotate: annotate}
		c := &collect{}
		for _, r := range records {
			if sendErr, err := e.send(r, c); sendErr != nil || err != nil {
				return c, errors.Join(sendErr, err)
			}
		}
		if !e.atBoundary() {
			t.Fatal("not at a boundary after the last record")
		}
		return c, nil
	}
	c, err := run(0, true)
	if err != nil || !bytes.Equal(c.got, stream) || c.parts != 5 {
		t.Fatalf("all events: %v, %d parts, equal %v", err, c.parts, bytes.Equal(c.got, stream))
	}
	c, err = run(0, false)
	if err != nil || !bytes.Equal(c.got, bytes.Join([][]byte{e1, big, e2}, nil)) {
		t.Fatalf("without Annotate_rows: %v", err)
	}
	skip := uint64(len(e1) + len(big)) // the start of ann: two records on
	c, err = run(skip, true)
	if err != nil || !bytes.Equal(c.got, stream[skip:]) {
		t.Fatalf("start after the cut event: %v", err)
	}
	for _, bad := range []uint64{uint64(len(e1) + 50), uint64(c1), uint64(len(e1) + len(big) + 1)} {
		if _, err := run(bad, true); !errors.Is(err, errNotBoundary) {
			t.Fatalf("start at %d inside an event: %v", bad, err)
		}
	}
	zero := make([]byte, 64) // an event claiming 0 bytes: an error, never a loop
	if _, err := (&recordEvents{}).send(zero, &collect{}); err == nil {
		t.Fatal("an event of size 0 was accepted")
	}
}
