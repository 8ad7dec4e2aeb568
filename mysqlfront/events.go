package mysqlfront

import (
	"errors"
	"fmt"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// recordEvents turns stored records into what a replica receives. Records may begin
// or end inside an event cut across them (a transaction stored in pieces), so it
// follows the event stream from record to record; it passes over the bytes before the
// replica's start position (which must be an event boundary, possibly several records
// on), and drops Annotate_rows events for replicas that did not ask for them (as
// MariaDB does).
type recordEvents struct {
	cut      binlog.Stream
	skip     uint64 // bytes still to pass over before the start position
	annotate bool   // the replica asked for Annotate_rows events
	drop     bool   // the event being passed is dropped
}

// errNotBoundary: the start position is not at an event boundary.
var errNotBoundary = errors.New("the position falls inside an event")

// send passes payload's events and parts to sink. sendErr is the sink's (the replica
// went away); err is the stored bytes' (they are not events, or the start position is
// inside one).
func (e *recordEvents) send(payload []byte, sink EventSink) (sendErr, err error) {
	err = e.cut.Feed(payload, func(part []byte, first, last bool) error {
		if e.skip > 0 {
			n := uint64(len(part))
			if n > e.skip || n == e.skip && !last {
				return errNotBoundary
			}
			e.skip -= n
			return nil
		}
		if first {
			e.drop = !e.annotate && part[4] == binlog.AnnotateRowsEvent
		}
		switch {
		case e.drop:
			return nil
		case first && last:
			sendErr = sink.Event(part)
		default:
			sendErr = sink.EventPart(part)
		}
		return sendErr
	})
	if sendErr != nil {
		return sendErr, nil
	}
	if err != nil {
		return nil, fmt.Errorf("served events: %w", err)
	}
	return nil, nil
}

// atBoundary reports whether everything before is sent and the next byte begins an
// event: a position the replica may resume from.
func (e *recordEvents) atBoundary() bool { return e.skip == 0 && e.cut.Left == 0 }
