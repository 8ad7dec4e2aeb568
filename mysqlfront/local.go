package mysqlfront

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
	"github.com/flotilla-relay/flotilla/statemachine"
)

// localSource serves a group from this node's replica. Its entries were applied, so
// raft committed them: a follower's replica can never hand out what a quorum does
// not hold, only lag behind the leader's.
type localSource struct {
	g   *statemachine.Group
	u   *placement.Upstream
	pol LocalPolicy
	log *slog.Logger
}

// LocalPolicy says when a local replica may serve.
type LocalPolicy struct {
	// Eligible returns nil while the replica may serve; once it returns an error,
	// open dumps end with it (make it error 1053, see ErrRetry, so replicas
	// reconnect and resume elsewhere).
	Eligible func() error
}

// catchUpWait bounds how long a dump waits for the local replica to receive a
// position a replica already has: a follower may trail the leader, and a new leader
// may still be applying entries its predecessor had served.
const catchUpWait = 10 * time.Second

// NewLocalSource serves upstream u from the local replica g under pol.
func NewLocalSource(g *statemachine.Group, u *placement.Upstream, pol LocalPolicy, log *slog.Logger) Source {
	return &localSource{g: g, u: u, pol: pol, log: log}
}

// ErrRetry is the error that ends a dump for a reason that passes (an election, a
// leader change): MySQL error 1053, which a replica's IO thread treats like a lost
// connection, reconnecting and resuming by itself.
func ErrRetry(format string, args ...any) error { return errRetry(format, args...) }

// Files implements Source.
func (l *localSource) Files(context.Context) (FileList, error) {
	files, err := l.g.Files()
	if err != nil {
		return FileList{}, errDump("%v", err)
	}
	t, _ := l.g.Tail()
	fl := FileList{Files: files, State: t.State, GTIDs: t.GTIDs(), File: t.File, Size: t.FileSize}
	if t.MySQL {
		purged, err := l.g.PurgedMySQL()
		if err != nil {
			return FileList{}, errDump("%v", err)
		}
		fl.Purged = purged.String()
	}
	return fl, nil
}

// waitFirstFile holds a blocking dump until the group has received its first binlog
// file, so a replica set up right after `upstream add` starts as soon as the binlog
// arrives instead of stopping for good on an error. A nil return with ctx done means
// the replica went away.
func (l *localSource) waitFirstFile(ctx context.Context) error {
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		t, changed := l.g.Tail()
		if t.File > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-check.C:
			if l.g.Closed() {
				return errClosed(l.u.Name)
			}
			if err := l.pol.Eligible(); err != nil {
				return err
			}
		}
	}
}

// locate finds where a dump starts. A position the local replica does not hold yet
// may only mean it trails (a follower, or a new leader applying its log): it retries
// as its tail grows, for catchUpWait, before the replica is told 1236.
func (l *localSource) locate(ctx context.Context, spec DumpSpec, have binlog.Position, haveMySQL binlog.MySQLSet) (statemachine.Start, error) {
	deadline := time.Now().Add(catchUpWait)
	for {
		_, changed := l.g.Tail()
		var start statemachine.Start
		var err error
		switch {
		case spec.MySQLGTIDMode:
			start, err = l.g.LocateMySQL(haveMySQL)
		case spec.GTIDMode:
			start, err = l.g.Locate(have)
		default:
			start, err = l.g.LocateFile(spec.File, uint64(spec.Pos))
		}
		// Only a position this replica lacks may appear as it catches up; damage, a
		// malformed request or a purged file will not.
		var pe *statemachine.PositionError
		if err == nil || !errors.As(err, &pe) || pe.Gone || time.Now().After(deadline) || ctx.Err() != nil {
			return start, err
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-time.After(time.Until(deadline)):
		}
	}
}

// Dump implements Source.
func (l *localSource) Dump(ctx context.Context, spec DumpSpec, w EventSink) error {
	g, u := l.g, l.u
	fl := flavorOf(u)
	fakeCRC := spec.HasChecksum && strings.EqualFold(spec.Checksum, "CRC32")
	// mariadb-binlog dumps with server_id 0 and expects the dump to end at the tail.
	nonBlock := spec.Flags&dumpNonBlock != 0 || spec.ServerID == 0
	if !nonBlock {
		if err := l.waitFirstFile(ctx); err != nil || ctx.Err() != nil {
			return err
		}
	}
	var have binlog.Position // GTID mode: what the replica already has
	var haveMySQL binlog.MySQLSet
	var err error
	if spec.MySQLGTIDMode {
		if haveMySQL, err = binlog.ParseMySQLSet(spec.MySQLSet); err != nil {
			return errDump("cannot read the replica's GTID set %q: %v", spec.MySQLSet, err)
		}
	}
	if spec.GTIDMode {
		have, err = binlog.ParsePosition(spec.ConnectState)
		if err != nil {
			return errDump("cannot read the replica's GTID position @slave_connect_state=%q: %v", spec.ConnectState, err)
		}
	}
	start, err := l.locate(ctx, spec, have, haveMySQL)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		var pe *statemachine.PositionError
		if errors.As(err, &pe) {
			return errDump("%s", pe.Reason)
		}
		return errDump("%v", err)
	}
	cur, err := g.NewCursor(start)
	if err != nil {
		return errDump("%v", err)
	}
	defer cur.Close()
	l.log.Info("binlog dump started", "upstream", u.Name, "group", u.GroupID, "gtid_mode", spec.GTIDMode, "mysql_gtid_mode", spec.MySQLGTIDMode, "file", statemachine.FileName(start.File),
		"pos", start.Served, "replica_server_id", spec.ServerID, "heartbeat", spec.Heartbeat)

	if err := w.Event(binlog.NewRotate(u.ServerID, 0, 0, binlog.FlagArtificial, statemachine.FileName(start.File), start.Pos(), fakeCRC)); err != nil {
		return nil
	}
	fde, fileCRC, err := fileFDE(g, start.File)
	if err != nil {
		return errDump("%v", err)
	}
	if start.Pos() > 4 {
		// Starting inside a file: send its FDE with log_pos 0 (the replica learns the
		// format without moving its position) and created 0 (it is not a master start,
		// so the replica must keep its temporary tables), as MariaDB does.
		binlog.ClearFDECreated(fde)
		binlog.SetLogPos(fde, 0, 0, fileCRC)
		if err := w.Event(fde); err != nil {
			return nil
		}
	}
	annotate := fl.annotate(spec.Flags)
	file, pos := start.File, start.Pos()
	w.Position(file, pos)
	spec.Heartbeat = servedHeartbeat(spec.Heartbeat)
	// The heartbeat timer is armed when the dump reaches the tail after sending (not
	// reset per record: a reader catching up sends many thousands a second).
	var hbTimer <-chan time.Time
	armed := true
	var hb *time.Timer
	if spec.Heartbeat > 0 {
		hb = time.NewTimer(spec.Heartbeat)
		defer hb.Stop()
		hbTimer = hb.C
	}
	eligibleCheck := time.NewTicker(time.Second)
	defer eligibleCheck.Stop()
	// A transaction may come in pieces, and an event cut across them; skipTxn is set
	// while passing a transaction the replica already has.
	events := &recordEvents{skip: start.Skip, annotate: annotate}
	var skipTxn bool
	// Positions are reported (and so the buffered events written) at the tail, at
	// each file's end and every reportBytes: a replica catching up costs a write per
	// buffer, not one per transaction.
	unreported := 0
	for {
		t, changed := g.Tail()
		rec, err := cur.Next(t)
		if errors.Is(err, statemachine.ErrAtTail) {
			if unreported > 0 {
				w.Position(file, pos)
				unreported = 0
			}
			if g.Closed() {
				return errClosed(u.Name)
			}
			if nonBlock {
				return w.EOF()
			}
			if hb != nil && !armed {
				hb.Reset(spec.Heartbeat)
				armed = true
			}
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			case <-hbTimer:
				// Heartbeats follow the file's checksum algorithm; the replica stops for good
				// if their file name or position disagree with what it has received.
				if err := w.Event(fl.heartbeat(u, spec.Flags, statemachine.FileName(file), pos, fileCRC)); err != nil {
					return nil
				}
				w.Position(file, pos) // a relay sends what it holds at each position report
				armed = false
			case <-eligibleCheck.C:
				if err := l.pol.Eligible(); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return errDump("%v", err)
		}
		if !rec.IsHeader() && !rec.IsRotate() && !rec.Continued {
			switch {
			case spec.MySQLGTIDMode:
				id, ok := statemachine.TxnMySQLGTID(rec.Payload)
				skipTxn = ok && haveMySQL.Contains(id)
			case spec.GTIDMode:
				id, ok := statemachine.TxnGTID(rec.Payload)
				skipTxn = ok && have.Contains(id)
			}
		}
		if skipTxn {
			skipTxn = rec.Continues
			if !skipTxn && fl.heartbeatPastSkipped() {
				file, pos = cur.Position() // the next heartbeat says where the source is
			}
			continue
		}
		sendErr, err := events.send(rec.Payload, w)
		var fe *framingError
		if errors.As(sendErr, &fe) {
			return errDump("Flotilla could not frame served file %s at %d: %v", statemachine.FileName(rec.File), rec.Pos, fe)
		}
		if sendErr != nil {
			return nil // the replica went away
		}
		if errors.Is(err, errNotBoundary) {
			return errDump("position %d in %s is not at an event boundary", start.Pos(), statemachine.FileName(start.File))
		}
		if err != nil {
			return errDump("served file %s at %d: %v", statemachine.FileName(rec.File), rec.Pos, err)
		}
		if !events.atBoundary() {
			continue // inside an event or before the start: not a position to report
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
			if err := w.Event(binlog.NewRotate(u.ServerID, 0, 0, binlog.FlagArtificial, statemachine.FileName(file), 4, fileCRC)); err != nil {
				return nil
			}
		}
		armed = false
		if unreported += len(rec.Payload) + 1; rec.IsRotate() || unreported >= reportBytes {
			w.Position(file, pos)
			unreported = 0
		}
	}
}

// reportBytes is how many served bytes a dump that is not at the tail sends between
// position reports: a write buffer's worth.
const reportBytes = dumpBufferSize

// errClosed ends a dump whose local group replica stopped: the upstream was removed,
// its group moved off this node, or the node's disk ran short. The replica reconnects
// (not 1236): the next login or dump is served from wherever the group is now, or
// told the upstream is unknown if it was removed.
func errClosed(name string) error {
	return errRetry("upstream %s's replica on this node stopped (removed, moved to other nodes, or this node's disk is short of space); reconnect", name)
}
