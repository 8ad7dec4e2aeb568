package mysqlfront

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// COM_BINLOG_DUMP flags.
const (
	dumpNonBlock       = 0x01 // end with EOF at the tail instead of waiting
	dumpAnnotateEvents = 0x02 // MariaDB: the replica wants Annotate_rows events
)

// defaultWriteTimeout bounds one write to a client when Limits.WriteTimeout is 0.
const defaultWriteTimeout = 2 * time.Minute

// writeTimeout bounds one write to a client, so a client that stops reading frees
// its goroutine instead of holding it forever.
func (s *Server) writeTimeout() time.Duration {
	if s.Limits.WriteTimeout > 0 {
		return s.Limits.WriteTimeout
	}
	return defaultWriteTimeout
}

// dumpRequest is a decoded COM_BINLOG_DUMP: pos u32, flags u16, server_id u32, file.
type dumpRequest struct {
	Pos      uint32
	Flags    uint16
	ServerID uint32
	File     string
}

func parseDump(data []byte) (dumpRequest, error) {
	if len(data) < 10 {
		return dumpRequest{}, fmt.Errorf("COM_BINLOG_DUMP of %d bytes is too short (needs 10)", len(data))
	}
	return dumpRequest{
		Pos:      binary.LittleEndian.Uint32(data),
		Flags:    binary.LittleEndian.Uint16(data[4:]),
		ServerID: binary.LittleEndian.Uint32(data[6:]),
		File:     strings.TrimRight(string(data[10:]), "\x00"),
	}, nil
}

// errDump is how every dump failure reaches the replica: error 1236, the code a
// replica's IO thread reports as "Got fatal error 1236 from master".
func errDump(format string, args ...any) error {
	return mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, fmt.Sprintf(format, args...))
}

// errRetry ends a dump for a reason that passes (an election, a leader change). A
// replica's IO thread stops for good on 1236 but treats ER_SERVER_SHUTDOWN like a lost
// connection and reconnects, which is what these cases need.
func errRetry(format string, args ...any) error {
	return mysql.NewError(mysql.ER_SERVER_SHUTDOWN, "Flotilla: "+fmt.Sprintf(format, args...))
}

// waitSource waits (briefly) for a source of the group: right after start-up or a
// leader change the group needs a moment to elect and replay.
func (ss *session) waitSource(ctx context.Context, u *placement.Upstream) (Source, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		src, err := ss.s.router.Source(ctx, u)
		if err == nil {
			return src, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errRetry("%v", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// heartbeatPeriod reads @master_heartbeat_period (nanoseconds); a period below
// minHeartbeat is raised to it, and an unreadable one means none.
func heartbeatPeriod(v string) time.Duration {
	ns, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil || ns == 0 {
		return 0
	}
	return servedHeartbeat(time.Duration(min(ns, uint64(1<<62))))
}

// dump serves COM_BINLOG_DUMP until the replica goes away, the source stops being
// eligible, or an error occurs. A nil return means the connection must simply close.
func (ss *session) dump(ctx context.Context, data []byte) error {
	req, err := parseDump(data)
	if err != nil {
		return errDump("%v", err)
	}
	u, err := ss.upstream()
	if err != nil {
		return err
	}
	spec := DumpSpec{GroupID: u.GroupID, File: req.File, Pos: req.Pos, Flags: req.Flags, ServerID: req.ServerID}
	csv, gtidMode := ss.vars["slave_connect_state"]
	if gtidMode {
		spec.GTIDMode = true
		if csv != nil {
			spec.ConnectState = *csv
		}
	}
	mode := "file"
	if gtidMode {
		mode = "gtid"
	}
	return ss.serveDump(ctx, u, spec, mode)
}

// dumpGTID serves a MySQL replica's COM_BINLOG_DUMP_GTID (auto-position): every
// transaction not in the GTID set it sends.
func (ss *session) dumpGTID(ctx context.Context, data []byte) error {
	req, err := parseDumpGTID(data)
	if err != nil {
		return errDump("%v", err)
	}
	ss.mysqlSet = req.Set
	u, err := ss.upstream()
	if err != nil {
		return err
	}
	if u.Flavor != "mysql" {
		return errDump("upstream %s is a MariaDB master, which has no COM_BINLOG_DUMP_GTID: replicate it by MariaDB GTID (MASTER_USE_GTID) or by file and position", u.Name)
	}
	spec := DumpSpec{GroupID: u.GroupID, Flags: req.Flags, ServerID: req.ServerID, MySQLGTIDMode: true, MySQLSet: req.Set.String()}
	return ss.serveDump(ctx, u, spec, "gtid")
}

// serveDump completes spec with the session's settings and streams the dump.
func (ss *session) serveDump(ctx context.Context, u *placement.Upstream, spec DumpSpec, mode string) error {
	// Events in served files carry the master's checksums; a replica that did not say
	// it understands checksums would misread them (MariaDB and MySQL refuse alike).
	ck := ss.vars["master_binlog_checksum"]
	if ck == nil {
		ck = ss.vars["source_binlog_checksum"]
	}
	if ck == nil && u.BinlogChecksum != "NONE" {
		return errDump("Slave can not handle replication events with the checksum that master is configured to log; set @master_binlog_checksum (MariaDB and MySQL replicas do) before COM_BINLOG_DUMP")
	}
	if ck != nil {
		spec.HasChecksum, spec.Checksum = true, *ck
	}
	if u.Flavor == "mysql" && ss.vars["mariadb_slave_capability"] != nil {
		// A MariaDB replica's flag 2 asks for Annotate_rows (MySQL groups have
		// none), not for MySQL's heartbeat v2, which it would not understand.
		spec.Flags &^= dumpHeartbeatV2
	}
	for _, name := range []string{"source_heartbeat_period", "master_heartbeat_period"} {
		if hb := ss.vars[name]; hb != nil {
			spec.Heartbeat = heartbeatPeriod(*hb)
			break
		}
	}

	reg := ss.ensureRegistered()
	semi := isSemiSyncReplica(ss.vars)
	// A dumping replica sends nothing more but semi-sync ACKs; a read failing means
	// it went away.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer cancel()
		if semi {
			ss.readAcks(reg)
			return
		}
		var b [1]byte
		_, _ = ss.c.client.Read(b[:])
	}()
	src, err := ss.waitSource(ctx, u)
	if err != nil {
		return err
	}
	reg.gid = u.GroupID
	if reg.serverID == 0 {
		reg.serverID = spec.ServerID
	}
	reg.mode = mode
	reg.semi.Store(semi)
	ss.s.Metrics.DumpStarted(u.Name)
	w := newEventWriter(ss, reg, ss.s.Metrics.SentTo(ss.user))
	if semi {
		w.txnEnd = txnEnds(u)
	}
	err = src.Dump(ctx, spec, w)
	if ferr := w.flush(); err == nil && ferr != nil {
		ss.log.Info("replica connection closed during dump", "err", ferr)
	}
	var fe *framingError
	if errors.As(err, &fe) {
		ss.log.Error("Flotilla framed served events wrongly (a bug): closing the replica's connection", "err", err)
	}
	if err != nil && w.left > 0 {
		// Mid-event (a relay broke inside an event sent in parts): an error packet
		// would be read as event bytes. Closing makes the replica reconnect.
		ss.log.Info("binlog dump ended inside an event; closing the connection", "err", err)
		return nil
	}
	return err
}

// headerFDE returns the FDE at the start of a file header record.
func headerFDE(p []byte) []byte {
	if len(p) < binlog.HeaderLen {
		return nil
	}
	size := int(binary.LittleEndian.Uint32(p[9:]))
	if size > len(p) {
		return nil
	}
	return p[:size]
}

// fileFDE returns a copy of the Format_description that opens a served file.
func fileFDE(g *statemachine.Group, file uint64) ([]byte, bool, error) {
	c, err := g.NewCursor(statemachine.Start{File: file, Served: 4, Seg: 0})
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	t, _ := g.Tail()
	rec, err := c.Next(t)
	if err != nil {
		return nil, false, err
	}
	if !rec.IsHeader() || len(rec.Payload) < binlog.HeaderLen {
		return nil, false, fmt.Errorf("served file %s does not start with its header", statemachine.FileName(file))
	}
	fde := append([]byte(nil), headerFDE(rec.Payload)...)
	f, err := binlog.ParseFDE(fde)
	if err != nil {
		return nil, false, fmt.Errorf("served file %s: %w", statemachine.FileName(file), err)
	}
	return fde, f.Checksummed(), nil
}

// eventWriter is a session's EventSink: it frames events as dump packets,
// [0x00][event], into a buffer written to the replica at each position report (the
// end of a stored record at an event boundary, a heartbeat), so a large transaction
// costs a write per 64 KiB instead of one per event. It records the replica's position for status.
//
// Framing streams: an event arriving in parts (EventPart) is framed as its bytes come,
// from the size in its header, so no event is ever held whole.
type eventWriter struct {
	ss   *session
	out  *bufio.Writer
	reg  *replicaInfo
	sent func(n int)
	// left is how many payload bytes of the event being framed are still to come
	// (its 0x00 prefix included), pkt how many the current packet still takes, and
	// full whether that packet is of the maximum size.
	left, pkt int
	full      bool
	// txnEnd, for a semi-sync replica, tells the events that end a transaction:
	// they carry the ACK request; every event carries the semi-sync header.
	// acking: the event being framed requests an ACK.
	txnEnd func(ev []byte) bool
	acking bool
}

// newEventWriter returns the writer of a dump to the session's client.
func newEventWriter(ss *session, reg *replicaInfo, sent func(n int)) *eventWriter {
	return &eventWriter{ss: ss, reg: reg, sent: sent, out: bufio.NewWriterSize(deadlineWriter{ss.c.client, ss.s.writeTimeout()}, dumpBufferSize)}
}

// framingError is a sink given bytes that are not whole events in order: a Flotilla
// bug, reported to the replica as such rather than as a lost connection.
type framingError struct{ msg string }

func (e *framingError) Error() string { return e.msg }

// Event implements EventSink. A write error is also remembered by out: the events
// after it fail too.
func (w *eventWriter) Event(ev []byte) error {
	if w.left != 0 {
		return &framingError{fmt.Sprintf("a whole event of %d bytes inside an event still owed %d bytes", len(ev), w.left-1)}
	}
	if len(ev) < binlog.HeaderLen || int(binary.LittleEndian.Uint32(ev[9:])) != len(ev) {
		return &framingError{fmt.Sprintf("an event of %d bytes whose header says otherwise", len(ev))}
	}
	return w.frame(ev)
}

// EventPart implements EventSink; each part goes to the replica before it returns,
// so a slow replica costs its write deadline per part, not per event.
func (w *eventWriter) EventPart(part []byte) error {
	if err := w.frame(part); err != nil {
		return err
	}
	return w.flush()
}

// frame writes event bytes as dump packet payload, starting a new event (and its 0x00
// prefix) when the previous one is complete.
func (w *eventWriter) frame(b []byte) error {
	if w.left == 0 {
		if len(b) < binlog.HeaderLen {
			return &framingError{fmt.Sprintf("an event to send begins with %d bytes, fewer than its header", len(b))}
		}
		w.left = int(binary.LittleEndian.Uint32(b[9:])) + 1
		if w.txnEnd == nil {
			if err := w.payload([]byte{0x00}); err != nil {
				return err
			}
		} else {
			w.acking = w.txnEnd(b)
			w.left += 2
			if err := w.payload(semiHeader(w.acking)); err != nil {
				return err
			}
		}
	}
	if err := w.payload(b); err != nil {
		return err
	}
	if w.acking && w.left == 0 {
		// As a semi-sync master does, the packet sequence restarts after an event
		// that asks for an ACK.
		w.acking = false
		w.ss.c.Sequence = 1
	}
	return nil
}

// payload writes b into packets of at most mysql.MaxPayloadLen bytes.
func (w *eventWriter) payload(b []byte) error {
	c := w.ss.c
	if len(b) > w.left {
		return &framingError{fmt.Sprintf("event bytes run %d past the size in the event's header", len(b)-w.left)}
	}
	for len(b) > 0 {
		if w.pkt == 0 {
			n := min(w.left, mysql.MaxPayloadLen)
			hdr := [4]byte{byte(n), byte(n >> 8), byte(n >> 16), c.Sequence}
			c.Sequence++
			if _, err := w.out.Write(hdr[:]); err != nil {
				return w.closed(err)
			}
			w.pkt, w.full = n, n == mysql.MaxPayloadLen
		}
		k := min(len(b), w.pkt)
		if _, err := w.out.Write(b[:k]); err != nil {
			return w.closed(err)
		}
		b, w.pkt, w.left = b[k:], w.pkt-k, w.left-k
	}
	if w.left == 0 && w.pkt == 0 && w.full {
		// A payload of an exact multiple of the maximum ends with an empty packet.
		if _, err := w.out.Write([]byte{0, 0, 0, c.Sequence}); err != nil {
			return w.closed(err)
		}
		c.Sequence++
		w.full = false
	}
	return nil
}

func (w *eventWriter) closed(err error) error {
	w.ss.log.Info("replica connection closed during dump", "err", err)
	return err
}

// dumpBufferSize is the dump's write buffer: events are written to the replica in
// writes of up to this size.
const dumpBufferSize = 64 << 10

// deadlineWriter gives every write to a replica its own deadline: the buffer in front
// of it also writes when it fills, which may be long after the last explicit flush
// (a replica that asked for no heartbeats, idle for minutes, then a large transaction).
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	_ = d.c.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.c.Write(p)
}

// flush writes what is buffered to the replica.
func (w *eventWriter) flush() error {
	if w.out.Buffered() == 0 {
		return nil
	}
	n := w.out.Buffered()
	err := w.out.Flush()
	if err == nil {
		w.sent(n)
	}
	return err
}

// Position implements EventSink: the events so far go to the replica.
func (w *eventWriter) Position(file, pos uint64) {
	_ = w.flush() // an error stays in out: the next Event returns it
	w.reg.file.Store(file)
	w.reg.pos.Store(pos)
}

// EOF implements EventSink: it ends a non-blocking dump the way MySQL does, with an
// EOF packet.
func (w *eventWriter) EOF() error {
	if err := w.flush(); err != nil {
		return nil
	}
	_ = w.ss.c.WritePacket([]byte{0, 0, 0, 0, mysql.EOF_HEADER, 0, 0, 0x02, 0})
	return nil
}
