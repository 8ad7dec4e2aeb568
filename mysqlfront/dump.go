package mysqlfront

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// COM_BINLOG_DUMP flags.
const (
	dumpNonBlock       = 0x01 // end with EOF at the tail instead of waiting
	dumpAnnotateEvents = 0x02 // MariaDB: the replica wants Annotate_rows events
)

// writeTimeout bounds one write to a replica, so a replica that stops reading frees
// its goroutine instead of holding it forever.
const writeTimeout = 2 * time.Minute

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

// waitServing waits (briefly) for this node to serve the group: right after start-up
// or a leader change the group needs a moment to elect and replay.
func (ss *session) waitServing(ctx context.Context, gid uint64) (*statemachine.Group, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, err := ss.s.router.Serving(gid)
		if err == nil {
			return g, nil
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

// waitFirstFile holds a blocking dump until the group has received its first binlog
// file, so a replica set up right after `upstream add` starts as soon as the binlog
// arrives instead of stopping for good on an error. A nil return with ctx done means
// the replica went away.
func (ss *session) waitFirstFile(ctx context.Context, g *statemachine.Group, name string, gid uint64) error {
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		t, changed := g.Tail()
		if t.File > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-check.C:
			if g.Closed() {
				return errDump("upstream %s was removed from Flotilla", name)
			}
			if !ss.s.router.StillServing(gid) {
				return errRetry("this Flotilla node no longer leads upstream %s; the replica reconnects and resumes from its position on the new leader", name)
			}
		}
	}
}

// dump serves COM_BINLOG_DUMP until the replica goes away, the node stops leading the
// group, or an error occurs. A nil return means the connection must simply close.
func (ss *session) dump(ctx context.Context, data []byte) error {
	req, err := parseDump(data)
	if err != nil {
		return errDump("%v", err)
	}
	u, err := ss.upstream()
	if err != nil {
		return err
	}
	g, err := ss.waitServing(ctx, u.GroupID)
	if err != nil {
		return err
	}
	reg := ss.ensureRegistered()
	reg.gid = u.GroupID
	if reg.serverID == 0 {
		reg.serverID = req.ServerID
	}

	// Events in served files carry the master's checksums; a replica that did not say
	// it understands checksums would misread them (MariaDB refuses the same way).
	ck := ss.vars["master_binlog_checksum"]
	if ck == nil && u.BinlogChecksum != "NONE" {
		return errDump("Slave can not handle replication events with the checksum that master is configured to log; set @master_binlog_checksum (MariaDB and MySQL replicas do) before COM_BINLOG_DUMP")
	}
	fakeCRC := ck != nil && strings.EqualFold(*ck, "CRC32")
	var heartbeat time.Duration
	if hb := ss.vars["master_heartbeat_period"]; hb != nil {
		if ns, err := strconv.ParseUint(strings.TrimSpace(*hb), 10, 64); err == nil {
			heartbeat = time.Duration(ns)
		}
	}

	// A dumping replica sends nothing more; a read returning means it went away.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		var b [1]byte
		_, _ = ss.c.Conn.Conn.Read(b[:])
		cancel()
	}()

	// mariadb-binlog dumps with server_id 0 and expects the dump to end at the tail.
	nonBlock := req.Flags&dumpNonBlock != 0 || req.ServerID == 0
	if !nonBlock {
		if err := ss.waitFirstFile(ctx, g, u.Name, u.GroupID); err != nil || ctx.Err() != nil {
			return err
		}
	}

	var start statemachine.Start
	var have binlog.Position // GTID mode: what the replica already has
	csv, gtidMode := ss.vars["slave_connect_state"]
	if gtidMode {
		s := ""
		if csv != nil {
			s = *csv
		}
		have, err = binlog.ParsePosition(s)
		if err != nil {
			return errDump("cannot read the replica's GTID position @slave_connect_state=%q: %v", s, err)
		}
		start, err = g.Locate(have)
		reg.mode = "gtid"
	} else {
		start, err = g.LocateFile(req.File, uint64(req.Pos))
		reg.mode = "file"
	}
	if err != nil {
		return errDump("%s", strings.TrimPrefix(err.Error(), statemachine.ErrPosition.Error()+": "))
	}
	cur, err := g.NewCursor(start)
	if err != nil {
		return errDump("%v", err)
	}
	defer cur.Close()
	ss.log.Info("binlog dump started", "upstream", u.Name, "mode", reg.mode, "file", statemachine.FileName(start.File),
		"pos", start.Served, "replica_server_id", req.ServerID, "heartbeat", heartbeat)

	w := &eventWriter{ss: ss, buf: make([]byte, 0, 64<<10)}
	w.serverID = u.ServerID
	if err := w.event(binlog.NewRotate(u.ServerID, 0, 0, binlog.FlagArtificial, statemachine.FileName(start.File), start.Pos(), fakeCRC)); err != nil {
		return nil
	}
	_, fileCRC, err := fileFDE(g, start.File)
	if err != nil {
		return errDump("%v", err)
	}
	if start.Pos() > 4 {
		// Starting inside a file: send its FDE with log_pos 0 (the replica learns the
		// format without moving its position) and created 0 (it is not a master start,
		// so the replica must keep its temporary tables), as MariaDB does.
		fde, _, _ := fileFDE(g, start.File)
		binlog.ClearFDECreated(fde)
		binlog.SetLogPos(fde, 0, 0, fileCRC)
		if err := w.event(fde); err != nil {
			return nil
		}
	}
	annotate := req.Flags&dumpAnnotateEvents != 0
	file, pos := start.File, start.Pos()
	reg.file.Store(file)
	reg.pos.Store(pos)
	var hbTimer <-chan time.Time
	if heartbeat > 0 {
		hbTimer = time.After(heartbeat)
	}
	leaderCheck := time.NewTicker(time.Second)
	defer leaderCheck.Stop()
	for {
		t, changed := g.Tail()
		rec, err := cur.Next(t)
		if errors.Is(err, statemachine.ErrAtTail) {
			if g.Closed() {
				return errDump("upstream %s was removed from Flotilla", u.Name)
			}
			if nonBlock {
				return w.eof()
			}
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			case <-hbTimer:
				// Heartbeats follow the file's checksum algorithm; the replica stops for good
				// if their file name or position disagree with what it has received.
				if err := w.event(binlog.NewHeartbeat(u.ServerID, statemachine.FileName(file), uint32(pos), fileCRC)); err != nil {
					return nil
				}
				hbTimer = time.After(heartbeat)
			case <-leaderCheck.C:
				if !ss.s.router.StillServing(u.GroupID) {
					return errRetry("this Flotilla node no longer leads upstream %s; the replica reconnects and resumes from its position on the new leader", u.Name)
				}
			}
			continue
		}
		if err != nil {
			return errDump("%v", err)
		}
		if gtidMode && !rec.IsHeader() && !rec.IsRotate() {
			if id, ok := statemachine.TxnGTID(rec.Payload); ok && have.Contains(id) {
				continue
			}
		}
		payload := rec.Payload
		if skip := start.Skip; skip > 0 {
			start.Skip = 0
			if err := checkBoundary(payload, skip); err != nil {
				return errDump("position %d in %s is not at an event boundary: %v", start.Pos(), statemachine.FileName(start.File), err)
			}
			payload = payload[skip:]
		}
		if err := w.payload(payload, annotate); err != nil {
			return nil
		}
		if rec.IsHeader() {
			if f, err := binlog.ParseFDE(headerFDE(rec.Payload)); err == nil {
				fileCRC = f.Checksummed()
			}
		}
		file, pos = cur.Position()
		if rec.IsRotate() {
			// Like MariaDB, announce the next file with a fake Rotate: mariadb-binlog
			// reading one file stops there.
			if err := w.event(binlog.NewRotate(u.ServerID, 0, 0, binlog.FlagArtificial, statemachine.FileName(file), 4, fileCRC)); err != nil {
				return nil
			}
		}
		reg.file.Store(file)
		reg.pos.Store(pos)
		if heartbeat > 0 {
			hbTimer = time.After(heartbeat)
		}
	}
}

// checkBoundary reports whether skipping n bytes of a record lands on an event start.
func checkBoundary(payload []byte, n uint64) error {
	var off uint64
	for off < n {
		if len(payload)-int(off) < binlog.HeaderLen {
			return fmt.Errorf("past the end of the record")
		}
		size := uint64(binary.LittleEndian.Uint32(payload[off+9:]))
		if size < binlog.HeaderLen {
			return fmt.Errorf("an event at offset %d claims %d bytes, less than its header", off, size)
		}
		off += size
	}
	if off != n {
		return fmt.Errorf("the position falls inside an event")
	}
	return nil
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

// eventWriter frames events as dump packets: [0x00][event].
type eventWriter struct {
	ss       *session
	buf      []byte
	serverID uint32
}

func (w *eventWriter) event(ev []byte) error {
	w.buf = append(w.buf[:0], 0, 0, 0, 0, 0x00)
	w.buf = append(w.buf, ev...)
	_ = w.ss.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := w.ss.c.WritePacket(w.buf); err != nil {
		w.ss.log.Info("replica connection closed during dump", "err", err)
		return err
	}
	if cap(w.buf) > 1<<20 {
		w.buf = make([]byte, 0, 64<<10)
	}
	return nil
}

// payload sends the events of a stored record, leaving out Annotate_rows events for
// replicas that did not ask for them (as MariaDB does).
func (w *eventWriter) payload(p []byte, annotate bool) error {
	return binlog.Split(p, func(ev []byte) error {
		if !annotate && ev[4] == binlog.AnnotateRowsEvent {
			return nil
		}
		return w.event(ev)
	})
}

// eof ends a non-blocking dump the way MySQL does: an EOF packet.
func (w *eventWriter) eof() error {
	_ = w.ss.c.WritePacket([]byte{0, 0, 0, 0, mysql.EOF_HEADER, 0, 0, 0x02, 0})
	return nil
}
